"""The inpainting job's real-format input and output, with fake inpainters.

Tiny BraTS-layout cases (27x22x15, an oblique affine, a header description) go
through `inpaint_job.inpaint_cases`; the checks are on the files written.
"""

import json
import os
import re
import stat
import zlib

import jax
import nibabel as nib
import numpy as np
import pytest
import scipy.ndimage as ndi

from configs.inpainting import inpaint
from data_pipelines import brats_layout
from sciimg_jax.core import intensity
from sciimg_jax.inpainting import inpaint_job
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError
from tolerances import float32_tolerance, max_abs

SHAPE = (27, 22, 15)          # x cropped to 24 (odd cut), y padded by 2, z padded by 1
VOLUME_SHAPE = (24, 24, 16)
AFFINE = np.array([[-0.9, 0.2, 0.0, 88.0],
                   [0.1, 1.1, 0.0, -121.5],
                   [0.0, 0.0, 1.4, -67.0],
                   [0.0, 0.0, 0.0, 1.0]])
DESCRIPTION = b"sciimg_jax inpaint test"
FILL = 0.3


class ConstantInpainter:
  """Fills the mask with a constant; records what it was given."""
  name = "constant"
  volume_shape = VOLUME_SHAPE

  def __init__(self):
    self.calls = []

  def __call__(self, voided, mask, key):
    assert voided.shape == mask.shape == self.volume_shape
    assert voided.dtype == mask.dtype == np.float32
    self.calls.append(dict(voided=voided, mask=mask, key=key))
    return np.where(mask > 0, FILL, voided).astype(np.float32)


class PatternInpainter:
  """Fills the mask with a value that encodes the voxel's position in the padded grid."""
  name = "pattern"
  volume_shape = VOLUME_SHAPE

  @staticmethod
  def pattern(shape):
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return ((i + 3 * j + 7 * k) % 17 / 8.0 - 1.0).astype(np.float32)

  def __call__(self, voided, mask, key):
    return np.where(mask > 0, self.pattern(voided.shape), voided).astype(np.float32)


class NeighbourhoodMeanInpainter:
  """Fills the mask with the mean of the known voxels around it (a crude inpainter)."""
  name = "neighbourhood-mean"
  volume_shape = VOLUME_SHAPE

  def __call__(self, voided, mask, key):
    ring = ndi.binary_dilation(mask > 0, iterations=2) & (mask == 0)
    return np.where(mask > 0, voided[ring].mean(), voided).astype(np.float32)


class SamplesInpainter:
  """Returns N samples: the constant fill plus i * 0.1 for sample i."""
  name = "samples"
  volume_shape = VOLUME_SHAPE

  def __init__(self, num):
    self.num = num

  def __call__(self, voided, mask, key):
    return np.stack([np.where(mask > 0, FILL + 0.1 * i, voided) for i in range(self.num)]
                    ).astype(np.float32)


def ellipsoid(centre=(13, 11, 7), radii=(9, 8, 6)):
  grid = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
  return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1


def default_mask():
  mask = np.zeros(SHAPE, np.uint8)
  mask[11:15, 9:13, 5:8] = 1
  return mask


def write(path, data, dtype=np.float32, slope=None):
  """Saves `data` with AFFINE and a header carrying DESCRIPTION (optionally int + scaling)."""
  header = nib.Nifti1Header()
  header["descrip"] = DESCRIPTION
  img = nib.Nifti1Image(np.asarray(data).astype(dtype), AFFINE, header)
  if slope is not None:
    img.header.set_slope_inter(slope, 0.0)
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(img, str(path))


def make_case(root, name, *, mask=None, voided_fn=None, brain=None, seed=0):
  """Writes `-t1n`, `-t1n-voided` and `-mask` of one case; returns its folder."""
  rng = np.random.default_rng(seed)
  brain = ellipsoid() if brain is None else brain
  t1n = np.where(brain, rng.uniform(50, 900, SHAPE), 0).astype(np.float32)
  mask = default_mask() if mask is None else mask
  voided = np.where(mask > 0, 0, t1n).astype(np.float32)
  if voided_fn:
    voided = voided_fn(voided)
  case = root / name
  write(brats_layout.case_file(case, "t1n"), t1n)
  write(brats_layout.case_file(case, "t1n-voided"), voided)
  write(brats_layout.case_file(case, "mask"), mask, dtype=np.uint8)
  return case


def config_for(input_dir="", figures=False):
  c = inpaint.get_config("tiny")
  c.inpaint.input_dir = str(input_dir)
  c.inpaint.figures = figures
  return c


def prediction(workdir, name):
  return workdir / "predictions" / name / f"{name}-t1n-inference.nii.gz"


def read(path):
  return np.asarray(nib.load(str(path)).dataobj, np.float32)


def test_geometry_header_and_values(tmp_path):
  # The voided region is not 0 in this file; the inpainter must still see -1 there.
  case = make_case(tmp_path / "in", "BraTS-GLI-00001-000",
                   voided_fn=lambda v: np.where(default_mask() > 0, 123.0, v))
  inpainter = ConstantInpainter()
  summary = inpaint_job.inpaint_cases(config_for(tmp_path / "in", figures=True),
                                          tmp_path / "w", inpainter)
  out = nib.load(str(prediction(tmp_path / "w", case.name)))
  voided_path = brats_layout.case_file(case, "t1n-voided")
  voided_img = nib.load(str(voided_path))
  voided = read(voided_path)
  mask = read(brats_layout.case_file(case, "mask")) > 0

  assert out.shape == SHAPE and out.get_data_dtype() == np.float32
  # the header stores the affine in float32: one rounding of each entry
  np.testing.assert_allclose(out.affine, AFFINE, rtol=float32_tolerance(1.0, 1))
  assert out.header["descrip"].tobytes().rstrip(b"\0") == DESCRIPTION
  for field in ("pixdim", "xyzt_units", "dim"):
    np.testing.assert_array_equal(out.header[field], voided_img.header[field])
  data = np.asarray(out.dataobj)
  assert data.dtype == np.float32
  np.testing.assert_array_equal(data[~mask], voided[~mask])          # bit-identical
  lo, hi = intensity.percentile_range(voided)
  np.testing.assert_allclose(data[mask], intensity.denormalize(np.float32(FILL), lo, hi), rtol=1e-6)

  # What the inpainter saw: normalised input, the voided region and the padding at -1.
  seen = inpainter.calls[0]
  assert seen["voided"].min() >= -1 and seen["voided"].max() <= 1
  assert np.all(seen["voided"][seen["mask"] > 0] == -1)
  assert seen["mask"].sum() == mask.sum()
  assert np.all(seen["voided"][:, :1] == -1) and np.all(seen["voided"][:, :, -1:] == -1)

  folder = tmp_path / "w" / "predictions" / case.name
  assert (folder / f"{case.name}-triplanar.png").stat().st_size > 1000
  timings = json.loads((tmp_path / "w" / "predictions" / "timings.json").read_text())
  assert set(timings) == {case.name} and timings[case.name] > 0
  saved = json.loads((tmp_path / "w" / "inpaint_summary.json").read_text())
  assert saved["done"] == summary["done"] and saved["failed"] == []
  assert saved["settings"]["inpainter"] == "constant"
  assert not [p for p in tmp_path.rglob(".*")]                        # no temporary files left


def test_scaled_integer_input_is_copied_exactly(tmp_path):
  """An int16 file with scl_slope: outside the mask the output equals the scaled input."""
  case = make_case(tmp_path / "in", "BraTS-GLI-00002-000")
  voided_path = brats_layout.case_file(case, "t1n-voided")
  write(voided_path, np.round(read(voided_path) * 2), dtype=np.int16, slope=0.5)
  inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w",
                                NeighbourhoodMeanInpainter())
  data = read(prediction(tmp_path / "w", case.name))
  voided, mask = read(voided_path), default_mask() > 0
  np.testing.assert_array_equal(data[~mask], voided[~mask])
  lo, hi = intensity.percentile_range(voided)
  assert np.all((data[mask] >= lo) & (data[mask] <= hi)) and np.ptp(data[mask]) == 0


def test_inpainted_values_land_on_their_voxels(tmp_path):
  """A position-coded fill survives the pad/crop and its inverse at the right voxels."""
  mask = ellipsoid(radii=(5, 4, 3)).astype(np.uint8)
  case = make_case(tmp_path / "in", "BraTS-GLI-00003-000", mask=mask)
  inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w", PatternInpainter())
  data = read(prediction(tmp_path / "w", case.name))
  voided = read(brats_layout.case_file(case, "t1n-voided"))
  lo, hi = intensity.percentile_range(voided)
  # x 27 -> 24 crops 1 voxel before (2 after); y 22 -> 24 pads 1 before, z 15 -> 16 pads 0.
  x = np.clip(np.arange(27) - 1, 0, 23)  # the ends are background, never in the mask
  expected = PatternInpainter.pattern(VOLUME_SHAPE)[np.ix_(x, np.arange(1, 23), np.arange(15))]
  m = mask > 0
  np.testing.assert_allclose(data[m], intensity.denormalize(expected, lo, hi)[m], rtol=1e-6)


def test_crop_that_would_cut_the_brain_fails(tmp_path):
  make_case(tmp_path / "in", "BraTS-GLI-00004-000", brain=ellipsoid(radii=(13.4, 8, 6)))
  good = make_case(tmp_path / "in", "BraTS-GLI-00005-000")
  summary = inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w",
                                          ConstantInpainter())
  assert list(summary["done"]) == [good.name]
  (failure,) = summary["failed"]
  assert failure["case"] == "BraTS-GLI-00004-000"
  assert "BraTS-GLI-00004-000-t1n-voided.nii.gz" in failure["error"]
  assert "centre crop" in failure["error"] and "axis 0" in failure["error"]


def test_bad_inputs_are_listed_and_the_others_go_on(tmp_path):
  root = tmp_path / "in"
  good = make_case(root, "BraTS-GLI-00010-000")
  make_case(root, "BraTS-GLI-00011-000", voided_fn=lambda v: np.where(v > 800, np.nan, v))
  make_case(root, "BraTS-GLI-00012-000", voided_fn=lambda v: np.where(v > 800, np.inf, v))
  make_case(root, "BraTS-GLI-00013-000", voided_fn=lambda v: -v)
  make_case(root, "BraTS-GLI-00014-000", voided_fn=lambda v: np.full_like(v, 5.0))
  corner = np.zeros(SHAPE, np.uint8)
  corner[:4, :4, :4] = 1
  make_case(root, "BraTS-GLI-00015-000", mask=corner)
  other_shape = make_case(root, "BraTS-GLI-00016-000")
  write(brats_layout.case_file(other_shape, "mask"), default_mask()[:, :, :-1], np.uint8)
  other_affine = make_case(root, "BraTS-GLI-00017-000")
  nib.save(nib.Nifti1Image(default_mask(), AFFINE + np.diag([0.0, 0.0, 0.5, 0.0])),
           str(brats_layout.case_file(other_affine, "mask")))
  four_d = make_case(root, "BraTS-GLI-00018-000")
  write(brats_layout.case_file(four_d, "t1n-voided"), np.ones(SHAPE + (2,)))
  empty = make_case(root, "BraTS-GLI-00019-000", mask=np.zeros(SHAPE, np.uint8))
  truncated = make_case(root, "BraTS-GLI-00020-000")
  path = brats_layout.case_file(truncated, "t1n-voided")
  path.write_bytes(path.read_bytes()[:-200])

  summary = inpaint_job.inpaint_cases(config_for(root), tmp_path / "w", ConstantInpainter())
  expectations = {
      "BraTS-GLI-00011-000": ("t1n-voided", "NaN or inf"),
      "BraTS-GLI-00012-000": ("t1n-voided", "NaN or inf"),
      "BraTS-GLI-00013-000": ("t1n-voided", "no positive intensities"),
      "BraTS-GLI-00014-000": ("t1n-voided", "no intensity range"),
      "BraTS-GLI-00015-000": ("mask", "outside the brain"),
      "BraTS-GLI-00016-000": ("mask", "shape (27, 22, 14) differs"),
      "BraTS-GLI-00017-000": ("mask", "affine differs"),
      "BraTS-GLI-00018-000": ("t1n-voided", "expected a 3D volume"),
      "BraTS-GLI-00020-000": ("t1n-voided", "unreadable"),
  }
  failed = {f["case"]: f["error"] for f in summary["failed"]}
  assert set(failed) == set(expectations)
  for name, (key, problem) in expectations.items():
    assert f"{name}-{key}.nii.gz" in failed[name] and problem in failed[name], failed[name]
  assert set(summary["done"]) == {good.name, empty.name}
  assert summary["copied_through"] == [empty.name]
  saved = json.loads((tmp_path / "w" / "inpaint_summary.json").read_text())
  assert saved["failed"] == summary["failed"]
  assert set(json.loads((tmp_path / "w" / "predictions" / "timings.json").read_text())) == {
      good.name, empty.name}
  for name in expectations:
    assert not prediction(tmp_path / "w", name).exists()


def test_empty_mask_copies_the_input_through(tmp_path):
  case = make_case(tmp_path / "in", "BraTS-GLI-00021-000", mask=np.zeros(SHAPE, np.uint8))
  inpainter = ConstantInpainter()
  summary = inpaint_job.inpaint_cases(config_for(tmp_path / "in", figures=True),
                                          tmp_path / "w", inpainter)
  assert summary["copied_through"] == [case.name] and not inpainter.calls
  out = nib.load(str(prediction(tmp_path / "w", case.name)))
  np.testing.assert_array_equal(np.asarray(out.dataobj),
                                read(brats_layout.case_file(case, "t1n-voided")))
  # the header stores the affine in float32: one rounding of each entry
  np.testing.assert_allclose(out.affine, AFFINE, rtol=float32_tolerance(1.0, 1))
  assert (prediction(tmp_path / "w", case.name).parent / f"{case.name}-triplanar.png").exists()


def test_mask_at_the_brain_surface_is_inside_the_brain(tmp_path):
  """A voided region open to the background (hole filling alone misses it) is accepted."""
  bite = ellipsoid(centre=(20, 11, 7), radii=(3.5, 3.5, 3.5)) & ellipsoid()
  case = make_case(tmp_path / "in", "BraTS-GLI-00022-000", mask=bite.astype(np.uint8))
  voided = read(brats_layout.case_file(case, "t1n-voided"))
  brain = inpaint_job.estimated_brain(voided)
  assert np.mean(~ndi.binary_fill_holes(voided > 0)[bite]) > 0.9  # hole filling misses it
  assert np.mean(~brain[bite]) < 0.3
  assert not np.any(brain & ~ellipsoid())                          # nothing added outside
  beside = ellipsoid(centre=(25, 11, 7), radii=(2.5, 2.5, 2.5))    # just beyond the surface
  assert np.mean(~brain[beside]) > 0.9
  summary = inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w",
                                          ConstantInpainter())
  assert list(summary["done"]) == [case.name], summary["failed"]


def test_single_pair_keys_and_all_failing(tmp_path):
  a = make_case(tmp_path / "in", "BraTS-GLI-00031-000")
  b = make_case(tmp_path / "in", "BraTS-GLI-00032-000", seed=1)
  c = config_for(tmp_path / "in", figures=False)
  c.seed = 3
  inpainter = ConstantInpainter()
  inpaint_job.inpaint_cases(c, tmp_path / "w", inpainter)
  expected = [jax.random.key_data(jax.random.fold_in(jax.random.key(3), zlib.crc32(d.name.encode())))
              for d in (a, b)]  # from the case name, not its place in the listing
  for call, key in zip(inpainter.calls, expected):
    np.testing.assert_array_equal(jax.random.key_data(call["key"]), key)

  single = config_for("")
  single.input = str(brats_layout.case_file(b, "t1n-voided"))
  single.mask = str(brats_layout.case_file(b, "mask"))
  single.inpaint.output_dir = str(tmp_path / "single-out")
  summary = inpaint_job.inpaint_cases(single, tmp_path / "w1", ConstantInpainter())
  assert list(summary["done"]) == [b.name]
  assert (tmp_path / "single-out" / b.name / f"{b.name}-t1n-inference.nii.gz").is_file()
  assert (tmp_path / "w1" / "inpaint_summary.json").is_file()

  both = config_for(tmp_path / "in")
  both.input, both.mask = single.input, single.mask
  with pytest.raises(InputError, match="not both"):
    inpaint_job.inpaint_cases(both, tmp_path / "w2", ConstantInpainter())
  half = config_for("")
  half.input = single.input
  with pytest.raises(InputError, match="give both"):
    inpaint_job.inpaint_cases(half, tmp_path / "w2", ConstantInpainter())

  bad = config_for("")
  bad.input = str(brats_layout.case_file(a, "t1n"))
  bad.mask = str(tmp_path / "missing-mask.nii.gz")
  with pytest.raises(InputError, match="every case failed"):
    inpaint_job.inpaint_cases(bad, tmp_path / "w3", ConstantInpainter())
  saved = json.loads((tmp_path / "w3" / "inpaint_summary.json").read_text())
  assert saved["failed"][0]["case"] == "BraTS-GLI-00031-000-t1n"
  assert "missing-mask.nii.gz: file not found" in saved["failed"][0]["error"]


class KeyInpainter:
  """Fills the mask with a value drawn from the case's key."""
  name = "key"
  volume_shape = VOLUME_SHAPE

  def __call__(self, voided, mask, key):
    value = float(jax.random.uniform(key, minval=-1.0, maxval=1.0))
    return np.where(mask > 0, value, voided).astype(np.float32)


def test_case_result_does_not_depend_on_the_folder(tmp_path):
  for name in ("BraTS-GLI-00030-000", "BraTS-GLI-00031-000"):
    make_case(tmp_path / "both", name)
  make_case(tmp_path / "alone", "BraTS-GLI-00031-000")
  inpaint_job.inpaint_cases(config_for(tmp_path / "both"), tmp_path / "w1", KeyInpainter())
  inpaint_job.inpaint_cases(config_for(tmp_path / "alone"), tmp_path / "w2", KeyInpainter())
  behind = read(prediction(tmp_path / "w1", "BraTS-GLI-00031-000"))
  alone = read(prediction(tmp_path / "w2", "BraTS-GLI-00031-000"))
  np.testing.assert_array_equal(behind, alone)
  first = read(prediction(tmp_path / "w1", "BraTS-GLI-00030-000"))
  assert not np.array_equal(first[default_mask() > 0], alone[default_mask() > 0])


@pytest.mark.parametrize("scale", [0.3, -1.0])
def test_soft_or_negative_mask_is_inpainted_not_copied(tmp_path, scale):
  case = make_case(tmp_path / "in", "BraTS-GLI-00032-000")
  write(brats_layout.case_file(case, "mask"), default_mask() * scale, np.float32)
  summary = inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w",
                                      ConstantInpainter())
  assert list(summary["done"]) == [case.name] and summary["copied_through"] == []


def test_outputs_get_the_mode_open_would_give(tmp_path):
  old = os.umask(0o022)
  try:
    make_case(tmp_path / "in", "BraTS-GLI-00033-000")
    inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w", ConstantInpainter())
  finally:
    os.umask(old)
  for path in (prediction(tmp_path / "w", "BraTS-GLI-00033-000"),
               tmp_path / "w" / "inpaint_summary.json"):
    assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_incomplete_case_folders_are_listed_as_failed(tmp_path, capsys, caplog):
  """... and each failure is printed once, in the summary (it used to be logged as well)."""
  root = tmp_path / "in"
  good = make_case(root, "BraTS-GLI-00040-000")
  no_mask = make_case(root, "BraTS-GLI-00041-000")
  brats_layout.case_file(no_mask, "mask").unlink()
  (root / "BraTS-GLI-00042-000").mkdir()
  plain = make_case(root, "BraTS-GLI-00043-000")  # stored as uncompressed .nii: simply read
  for key in ("t1n", "t1n-voided", "mask"):
    gz = brats_layout.case_file(plain, key)
    nib.save(nib.load(str(gz)), str(gz.with_suffix("")))
    gz.unlink()
  other = make_case(root, "BraTS-GLI-00044-000")
  for f in other.iterdir():
    f.rename(f.with_name(f.name.replace("00044", "00099")))
  summary = inpaint_job.inpaint_cases(config_for(root), tmp_path / "w", ConstantInpainter())
  assert sorted(summary["done"]) == [good.name, plain.name]
  failed = {f["case"]: f["error"] for f in summary["failed"]}
  assert "missing BraTS-GLI-00041-000-mask.nii.gz" in failed["BraTS-GLI-00041-000"]
  assert "empty case folder" in failed["BraTS-GLI-00042-000"]
  assert "BraTS-GLI-00099-000" in failed["BraTS-GLI-00044-000"]
  assert "prefix must be the folder name" in failed["BraTS-GLI-00044-000"]
  captured = capsys.readouterr()
  printed = captured.out + captured.err + "\n".join(r.getMessage() for r in caplog.records)
  for name, error in failed.items():
    assert printed.count(error) == 1 and f"  failed {name}: {error}" in captured.out, printed


def test_a_failed_rerun_leaves_no_stale_prediction(tmp_path):
  case = make_case(tmp_path / "in", "BraTS-GLI-00045-000")
  make_case(tmp_path / "in", "BraTS-GLI-00046-000")
  config = config_for(tmp_path / "in", figures=True)
  inpaint_job.inpaint_cases(config, tmp_path / "w", ConstantInpainter())
  assert prediction(tmp_path / "w", case.name).is_file()
  write(brats_layout.case_file(case, "mask"), default_mask()[:, :, :-1], np.uint8)
  summary = inpaint_job.inpaint_cases(config, tmp_path / "w", ConstantInpainter())
  assert [f["case"] for f in summary["failed"]] == [case.name]
  assert not prediction(tmp_path / "w", case.name).exists()
  assert not (tmp_path / "w" / "predictions" / case.name / f"{case.name}-triplanar.png").exists()
  assert len(summary["removed_stale"]) == 2
  timings = json.loads((tmp_path / "w" / "predictions" / "timings.json").read_text())
  assert case.name not in timings


@pytest.mark.parametrize("key,value,problem", [
    ("sampling.steps", 0, "whole number >= 1"), ("sampling.stepper", "foo", "unknown stepper"),
    ("sampling.stage2.steps", 0, "whole number >= 1"),
    ("sampling.stage2.stepper", "foo", "unknown stepper"),
    ("sampling.stage2.t0", 1.5, "(0, 1]"), ("pipeline.resampling.max_loops", -1, ">= 0"),
    ("sampling.chunk_size", 0, ">= 1"), ("pipeline.method", "cubic", "unknown method"),
    ("pipeline.refiner", "sagittal", "known: axial, coronal, average, tpdm"),
    ("sampling.num_samples", 0, "whole number >= 1"),
    ("sampling.clip_x0", -1.0, "0 = no clipping"),
    ("sampling.stepper", "dpm++2m", "does not run with RePaint loops")])
def test_pipeline_config_is_checked_before_any_work(key, value, problem):
  from sciimg_jax.inpainting import volume_inpainter  # noqa: PLC0415
  c = inpaint.get_config("tiny")
  *path, last = key.split(".")
  node = c
  for name in path:
    node = node[name]
  node[last] = value
  with pytest.raises(InputError, match=rf"{re.escape(key)}: .*{re.escape(problem)}"):
    volume_inpainter.VolumeInpainter(c)  # before any model is loaded


def test_large_field_of_view_is_normalised_from_the_brain(tmp_path):
  small = np.zeros((64, 64, 40), np.float32)
  small[30:34, 30:34, 18:22] = np.linspace(100, 800, 64).reshape(4, 4, 4)  # 0.2 % of voxels
  lo, hi = intensity.percentile_range(small)
  assert 100 <= lo < hi <= 800
  with pytest.raises(InputError, match="no intensity range"):
    intensity.percentile_range(small, nonzero_fallback=False)  # scoring's exact rule
  from sciimg_jax.inpainting import brats_metrics  # noqa: PLC0415
  with pytest.raises(InputError, match="no intensity range"):
    brats_metrics.normalized_in_mask(small, small, small, small > 0)


def test_non_ras_voxel_order_is_warned_at_inference(tmp_path, caplog):
  case = make_case(tmp_path / "in", "BraTS-GLI-00047-000")
  sra = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)  # axes S, R, A
  for key in ("t1n-voided", "mask", "t1n"):
    path = brats_layout.case_file(case, key)
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), sra), str(path))
  with caplog.at_level("WARNING"):
    inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w", ConstantInpainter())
  assert any("not RAS/LPS-like" in r.getMessage() and "BraTS-GLI-00047-000" in r.getMessage()
             for r in caplog.records)


class InterruptingInpainter(ConstantInpainter):
  """Presses Ctrl-C (asks for a stop) while inpainting its first case."""

  def __call__(self, voided, mask, key):
    from sciimg_jax.core import interrupts  # noqa: PLC0415
    interrupts.request()
    return super().__call__(voided, mask, key)


def test_interrupt_keeps_finished_cases_and_stops(tmp_path):
  from sciimg_jax.core import interrupts  # noqa: PLC0415
  for name in ("BraTS-GLI-00050-000", "BraTS-GLI-00051-000"):
    make_case(tmp_path / "in", name)
  try:
    with pytest.raises(interrupts.Interrupted, match="1 finished cases kept"):
      inpaint_job.inpaint_cases(config_for(tmp_path / "in"), tmp_path / "w",
                                InterruptingInpainter())
  finally:
    interrupts.clear()
  assert prediction(tmp_path / "w", "BraTS-GLI-00050-000").is_file()
  assert not prediction(tmp_path / "w", "BraTS-GLI-00051-000").exists()
  summary = json.loads((tmp_path / "w" / "inpaint_summary.json").read_text())
  assert list(summary["done"]) == ["BraTS-GLI-00050-000"] and summary["interrupted"] == "after 1 of 2"
  assert not [p for p in (tmp_path / "w").rglob(".*")]  # no temporary files


def test_unwritable_output_folder_fails_before_any_case(tmp_path):
  make_case(tmp_path / "in", "BraTS-GLI-00052-000")
  (tmp_path / "a_file").write_text("")
  config = config_for(tmp_path / "in")
  config.inpaint.output_dir = str(tmp_path / "a_file" / "predictions")
  inpainter = ConstantInpainter()
  with pytest.raises(InputError, match="cannot write outputs here"):
    inpaint_job.inpaint_cases(config, tmp_path / "w", inpainter)
  assert not inpainter.calls and not (tmp_path / "w" / "inpaint_summary.json").exists()


@pytest.mark.parametrize("method", ["biharmonic", "harmonic"])
def test_classical_methods_run_through_the_job(tmp_path, method):
  case = make_case(tmp_path / "in", "BraTS-GLI-00053-000")
  config = config_for(tmp_path / "in")
  config.pipeline.method = method
  inpainter = inpaint_job.build_inpainter(config)  # no model is needed
  summary = inpaint_job.inpaint_cases(config, tmp_path / "w", inpainter)
  assert list(summary["done"]) == [case.name] and summary["inpainter"] == f"{method}/none"
  data = read(prediction(tmp_path / "w", case.name))
  voided, truth, mask = (read(brats_layout.case_file(case, k)) for k in ("t1n-voided", "t1n", "mask"))
  m = mask > 0
  np.testing.assert_array_equal(data[~m], voided[~m])
  lo, hi = intensity.percentile_range(voided)
  # denormalize of values clipped to [-1, 1]: y + 1, hi - lo and the product, + lo (x 0.5 is
  # exact): 4 float32 roundings on values <= hi
  slack = float32_tolerance(hi, 4)
  assert np.all((data[m] >= lo - slack) & (data[m] <= hi + slack)) and np.ptp(data[m]) > 0


def test_samples_give_mean_std_and_sample_files(tmp_path):
  case = make_case(tmp_path / "in", "BraTS-GLI-00009-000")
  c = config_for(tmp_path / "in")
  c.inpaint.write_sample = True
  inpaint_job.inpaint_cases(c, tmp_path / "w", SamplesInpainter(3))
  voided = read(brats_layout.case_file(case, "t1n-voided"))
  mask = read(brats_layout.case_file(case, "mask")) > 0
  lo, hi = intensity.percentile_range(voided)
  fills = [intensity.denormalize(np.float32(FILL + 0.1 * i), lo, hi) for i in range(3)]
  folder = tmp_path / "w" / "predictions" / case.name
  mean = read(prediction(tmp_path / "w", case.name))
  std = read(brats_layout.case_file(folder, "t1n-inference-std"))
  first = read(brats_layout.case_file(folder, "t1n-sample"))
  # float32 in the job and here: a mean of 3 positive values (2 adds, 1 division a side); the
  # std subtracts that mean (errors of eps |fill|, not eps std), squares, sums 3, divides and
  # takes the root: <= 10 roundings a side on values <= |fill|
  np.testing.assert_allclose(mean[mask], np.mean(fills), rtol=float32_tolerance(1.0, 2 * 3))
  np.testing.assert_allclose(std[mask], np.std(fills), rtol=0,
                             atol=float32_tolerance(max_abs(fills), 2 * 10))
  np.testing.assert_allclose(first[mask], fills[0], rtol=1e-5)
  np.testing.assert_array_equal(mean[~mask], voided[~mask])
  assert np.all(std[~mask] == 0)
  # One sample into the same folder: the older std and sample files go, they are not this run's.
  inpaint_job.inpaint_cases(c, tmp_path / "w", SamplesInpainter(1))
  assert sorted(p.name for p in folder.glob("*.nii.gz")) == [f"{case.name}-t1n-inference.nii.gz"]
  np.testing.assert_allclose(read(prediction(tmp_path / "w", case.name))[mask], fills[0], rtol=1e-5)
