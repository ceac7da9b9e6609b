"""Tests of the embedded MNI152-derived BraTS-like data (4 mm, a few cases)."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data_pipelines import brats_layout
from data_pipelines import synthetic_brats
from sciimg_jax.core.errors import InputError

KEYS = ("t1n", "t1n-voided", "t2w", "t2f", "mask", "mask-healthy", "mask-unhealthy",
        "mask-brain")
SHAPE_4MM = (50, 59, 48)  # The 2 mm MNI grid (99, 117, 95) halved, odd sizes padded.
AFFINE_4MM = np.array([[4., 0, 0, -97], [0, 4, 0, -133], [0, 0, 4, -71], [0, 0, 0, 1]])
NUM_TRAIN, NUM_EVAL = 3, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp("synthetic")
  paths = synthetic_brats.generate(out, num_train=NUM_TRAIN, num_eval=NUM_EVAL, seed=0,
                                   progress=False)
  return out, paths


@pytest.fixture(scope="module")
def cases(dataset):
  _, paths = dataset
  dirs = (brats_layout.find_cases(paths["train"], required=KEYS)
          + brats_layout.find_cases(paths["eval"], required=KEYS))
  return [brats_layout.load_case(d, keys=KEYS) for d in dirs]


def _files(root):
  return sorted(p for p in root.rglob("*") if p.is_file())


def test_layout_shapes_and_affines(dataset, cases):
  out, paths = dataset
  assert paths == {"train": out / "train", "eval": out / "eval"}
  assert len(brats_layout.find_cases(paths["train"])) == NUM_TRAIN
  assert len(brats_layout.find_cases(paths["eval"])) == NUM_EVAL
  for case in cases:
    assert set(case.volumes) == set(KEYS)
    for key in KEYS:
      img = nib.load(str(brats_layout.case_file(case.directory, key)))
      assert img.shape == SHAPE_4MM
      np.testing.assert_allclose(img.affine, AFFINE_4MM, atol=1e-6)
      np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), 4.0)
      assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
      expected = np.uint8 if key.startswith("mask") else np.float32
      assert img.get_data_dtype() == expected, key


def test_masks_and_voided(cases):
  for case in cases:
    v = case.volumes
    mask, healthy = v["mask"] > 0, v["mask-healthy"] > 0
    unhealthy, brain = v["mask-unhealthy"] > 0, v["mask-brain"] > 0
    assert healthy.any() and unhealthy.any()
    np.testing.assert_array_equal(mask, healthy | unhealthy)
    np.testing.assert_array_equal(v["t1n-voided"][~mask], v["t1n"][~mask])
    assert np.all(v["t1n-voided"][mask] == 0)
    assert healthy[brain].sum() >= 0.75 * healthy.sum()
    assert not (ndimage.binary_dilation(unhealthy, np.ones((3, 3, 3), bool)) & healthy).any()
    assert (unhealthy & ~brain).sum() == 0
    for key in ("t1n", "t2w", "t2f"):
      assert np.all(v[key][~brain] == 0), key
      assert np.all(v[key] >= 0) and np.median(v[key][brain]) > 0, key


def test_plausible_contrasts(cases):
  # Ventricular CSF (dark on T1) is bright on T2 and dark on FLAIR; the tumour is T1
  # hypointense and FLAIR hyperintense relative to the healthy brain.
  for case in cases:
    v = case.volumes
    brain = v["mask-brain"] > 0
    healthy_brain = brain & (v["mask"] == 0)
    inner = ndimage.binary_erosion(brain, iterations=2) & healthy_brain
    t1, t2, flair = v["t1n"], v["t2w"], v["t2f"]
    dark_t1 = inner & (t1 < np.percentile(t1[inner], 5))
    bright_t1 = inner & (t1 > np.percentile(t1[inner], 90))  # White matter.
    assert t2[dark_t1].mean() > t2[bright_t1].mean()
    assert flair[dark_t1].mean() < flair[bright_t1].mean()
    tumour = v["mask-unhealthy"] > 0
    assert t1[tumour].mean() < 0.9 * t1[bright_t1].mean()
    assert flair[tumour].mean() > 1.2 * np.median(flair[healthy_brain])


def test_subjects_deterministic_distinct_and_disjoint(dataset, tmp_path):
  _, paths = dataset
  a, affine_a = synthetic_brats.synthesize_subject(1, seed=0)
  b, affine_b = synthetic_brats.synthesize_subject(1, seed=0)
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key
  np.testing.assert_array_equal(affine_a, affine_b)
  on_disk = brats_layout.load_case(paths["train"] / synthetic_brats.case_name(1), keys=KEYS)
  for key in KEYS:
    np.testing.assert_array_equal(on_disk.volumes[key], a[key].astype(np.float32))

  c, _ = synthetic_brats.synthesize_subject(2, seed=0)
  d, _ = synthetic_brats.synthesize_subject(1, seed=1)
  for other in (c, d):
    assert np.abs(other["t1n"] - a["t1n"]).mean() > 0.05 * a["t1n"].mean()
    assert not np.array_equal(other["mask-unhealthy"], a["mask-unhealthy"])

  train = {p.name for p in brats_layout.find_cases(paths["train"])}
  evals = {p.name for p in brats_layout.find_cases(paths["eval"])}
  assert len(train) == NUM_TRAIN and len(evals) == NUM_EVAL and not train & evals

  # The evaluation set does not depend on num_train.
  other = synthetic_brats.generate(tmp_path, num_train=1, num_eval=NUM_EVAL, seed=0,
                                   progress=False)
  other_evals = brats_layout.find_cases(other["eval"])
  assert [p.name for p in other_evals] == sorted(evals)
  for case_dir in other_evals:
    mine = brats_layout.load_case(paths["eval"] / case_dir.name, keys=KEYS)
    theirs = brats_layout.load_case(case_dir, keys=KEYS)
    for key in KEYS:
      np.testing.assert_array_equal(mine.volumes[key], theirs.volumes[key])


def test_deformation_is_diffeomorphic():
  shape = (30, 34, 28)
  for seed in range(3):
    rng = np.random.default_rng(seed)
    disp = synthetic_brats.random_displacement(rng, shape, 4.0, amplitude_mm=3.5)
    assert np.abs(disp).max() > 1.0  # Really deforms.
    assert synthetic_brats.jacobian_determinant(disp, 4.0).min() > 0


def test_cache_reuse_and_regeneration(tmp_path):
  out = tmp_path / "data"
  synthetic_brats.generate(out, num_train=2, num_eval=1, seed=3, progress=False)
  manifest = json.loads((out / synthetic_brats.MANIFEST).read_text())
  assert manifest["complete"] and manifest["seed"] == 3 and manifest["num_train"] == 2
  before = {p: p.stat().st_mtime_ns for p in _files(out)}

  synthetic_brats.generate(out, num_train=2, num_eval=1, seed=3, progress=False)
  assert {p: p.stat().st_mtime_ns for p in _files(out)} == before

  # Fewer training cases: the stale one goes, the others are kept untouched.
  synthetic_brats.generate(out, num_train=1, num_eval=1, seed=3, progress=False)
  names = [p.name for p in sorted((out / "train").iterdir())]
  assert names == [synthetic_brats.case_name(0)]
  kept = brats_layout.case_file(out / "train" / names[0], "t1n")
  assert kept.stat().st_mtime_ns == before[kept]

  # A different seed regenerates everything.
  old = nib.load(str(kept)).get_fdata()
  synthetic_brats.generate(out, num_train=1, num_eval=1, seed=4, progress=False)
  assert not np.array_equal(nib.load(str(kept)).get_fdata(), old)
  assert json.loads((out / synthetic_brats.MANIFEST).read_text())["seed"] == 4
  assert len(brats_layout.find_cases(out / "eval")) == 1

  # A half-written case (interrupted run) is cleaned up and never listed.
  leftover = out / "train" / ".tmp-BraTS-GLI-00001-000-x"
  leftover.mkdir()
  synthetic_brats.generate(out, num_train=2, num_eval=1, seed=4, progress=False)
  assert not leftover.exists()
  assert len(brats_layout.find_cases(out / "train", required=KEYS)) == 2


def test_refuses_foreign_folder(tmp_path):
  (tmp_path / "train" / "BraTS-GLI-00000-000").mkdir(parents=True)
  with pytest.raises(InputError, match="no manifest"):
    synthetic_brats.generate(tmp_path, num_train=1, num_eval=1, progress=False)
  assert (tmp_path / "train" / "BraTS-GLI-00000-000").is_dir()


@pytest.mark.parametrize("resolution", [3, 0, 4.5, "4", None, True])
def test_bad_resolution(tmp_path, resolution):
  with pytest.raises(InputError) as e:
    synthetic_brats.generate(tmp_path, num_train=1, num_eval=1, resolution_mm=resolution)
  assert e.value.where == "data.synthetic.resolution_mm"
  assert not any(tmp_path.iterdir())


def test_bad_counts(tmp_path):
  with pytest.raises(InputError, match="num_train"):
    synthetic_brats.generate(tmp_path, num_train=-1, num_eval=1)
  with pytest.raises(InputError, match="num_train"):
    synthetic_brats.generate(tmp_path, num_train=synthetic_brats.EVAL_FIRST_SUBJECT + 1,
                             num_eval=1)


def test_two_mm_grid():
  volumes, affine = synthetic_brats.synthesize_subject(0, resolution_mm=2)
  assert volumes["t1n"].shape == (99, 117, 95)
  np.testing.assert_allclose(nib.affines.voxel_sizes(affine), 2.0)


def test_main(tmp_path, capsys):
  synthetic_brats.main(["--out_dir", str(tmp_path), "--num_train", "1", "--num_eval", "1",
                        "--no_progress"])
  assert "train:" in capsys.readouterr().out
  assert len(brats_layout.find_cases(tmp_path / "eval")) == 1
  with pytest.raises(SystemExit, match="resolution_mm"):
    synthetic_brats.main(["--out_dir", str(tmp_path / "x"), "--num_train", "1",
                          "--resolution_mm", "3"])


def test_case_folders_and_files_get_the_plain_modes(tmp_path):
  import os  # noqa: PLC0415
  import stat  # noqa: PLC0415
  old = os.umask(0o022)
  try:
    folder = synthetic_brats.write_case(tmp_path, 7, resolution_mm=4)
  finally:
    os.umask(old)
  assert stat.S_IMODE(folder.stat().st_mode) == 0o755
  assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
