"""Bad inputs that used to get through (issue 23, item 7): each stops with one line that
names the file or config key, or is handled and said so. Tiny constructed inputs only."""

import pathlib

import nibabel as nib
import numpy as np
import pytest

from data_pipelines import volume_cases
from sciimg_jax.core import volumes
from sciimg_jax.core.errors import InputError


def write_case(root, name, volumes_by_key, affine=None):
  """A BraTS-layout case folder `root/name` with one NIfTI per key."""
  case = root / name
  case.mkdir(parents=True)
  for key, data in volumes_by_key.items():
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32),
                             np.eye(4) if affine is None else affine),
             case / f"{name}-{key}.nii.gz")
  return case


def brain_block(shape, box, value=100.0):
  v = np.zeros(shape, np.float32)
  v[box] = value + np.arange(v[box].size, dtype=np.float32).reshape(v[box].shape) % 7
  return v


# --- the ensembler's grid: a brain larger than data.volume_shape ------------------------------

@pytest.fixture
def sr_data():
  from configs.ensembler import slice_model
  c = slice_model.get_config("sr")
  c.data.volume_shape = (8, 8, 8)
  return c.data


def test_a_brain_beyond_the_grid_is_refused_with_the_shapes(sr_data, tmp_path):
  root = tmp_path / "cases"
  write_case(root, "BraTS-GLI-00001-000", {"t2f": brain_block((12, 12, 12), np.s_[3:9, 3:9, 3:9])})
  write_case(root, "BraTS-GLI-00002-000", {"t2f": brain_block((12, 12, 12), np.s_[1:11, 3:9, 3:9])})
  # (10, 8, 8) would hold the brain, but the SR task's t2f:pool4 needs axes divisible by 4
  with pytest.raises(InputError, match=r"BraTS-GLI-00002-000-t2f.nii.gz: the case is \(12, 12, 12\)"
                     r" and 72 of 360 brain voxels lie outside .*volume_shape=\(8, 8, 8\).*"
                     r"at least \(12, 8, 8\) \(the smallest grid that holds the brain, each "
                     r"axis divisible by the downsampling factor 4;") as e:
    volume_cases.prepare(root, sr_data, tmp_path / "cache")
  assert "\n" not in str(e.value)
  assert not list((tmp_path / "cache").rglob("BraTS-GLI-00002-000.npy"))  # nothing written


def test_crop_brain_crops_and_a_later_run_without_it_still_refuses(sr_data, tmp_path):
  root = tmp_path / "cases"
  write_case(root, "BraTS-GLI-00002-000", {"t2f": brain_block((12, 12, 12), np.s_[1:11, 3:9, 3:9])})
  sr_data.crop_brain = True
  cases = volume_cases.prepare(root, sr_data, tmp_path / "cache")
  assert cases[0].meta["brain_voxels_cut"] == 72
  sr_data.crop_brain = False  # the cache holds the cropped case: still refused
  with pytest.raises(InputError, match="72 brain voxels lie outside"):
    volume_cases.prepare(root, sr_data, tmp_path / "cache")


def test_background_alone_is_cropped_without_a_word(sr_data, tmp_path):
  root = tmp_path / "cases"
  write_case(root, "BraTS-GLI-00001-000", {"t2f": brain_block((12, 12, 12), np.s_[3:9, 2:10, 3:9])})
  cases = volume_cases.prepare(root, sr_data, tmp_path / "cache")
  assert cases[0].meta["brain_voxels_cut"] == 0
  assert volumes.outside_center_crop(np.ones((5, 4)), (3, 4)) == 8
  assert volumes.covering_shape(np.pad(np.ones((1, 1)), ((0, 4), (0, 0))), (3, 1)) == (4, 1)
  # issue 34: the grid suggested for a (40, 50, 45) case was (36, 45, 43), which the SR task
  # refuses; with its factor 4: the smallest multiple of 4 that holds the brain on each axis
  brain = np.zeros((40, 50, 45))
  brain[2:38, 2:47, 1:44] = 1
  assert volumes.covering_shape(brain, (32, 32, 32)) == (36, 45, 43)
  assert volumes.covering_shape(brain, (32, 32, 32), multiple=4) == (36, 48, 44)
  assert volumes.covering_shape(brain, (48, 32, 32), multiple=4) == (48, 48, 44)  # pads


# --- normalisation: a brain at a tiny share of a large field of view --------------------------

def test_a_brain_at_0_78_percent_of_the_voxels_is_normalised_from_its_own_percentiles():
  from sciimg_jax.core import intensity
  rng = np.random.default_rng(0)
  brain = rng.uniform(200.0, 1400.0, (10, 10, 10))
  large = np.zeros((50, 50, 51))  # the brain is 1000 / 127500 = 0.78 % of the voxels
  large[20:30, 20:30, 20:30] = brain
  # the challenge's whole-volume rule puts hi at the brain's ~36th percentile
  assert np.mean(brain > np.percentile(large, 99.5)) > 0.6
  lo, hi = intensity.percentile_range(large)
  assert (lo, hi) == pytest.approx(tuple(np.percentile(brain, [0.5, 99.5])))
  # a BraTS-like share (here 15 %) keeps the challenge's rule exactly
  tight = np.zeros((19, 19, 19))
  tight[4:14, 4:14, 4:14] = brain
  assert intensity.percentile_range(tight) == pytest.approx(
      (0.0, float(np.percentile(tight, 99.5))))


# --- SIGTERM while a prediction is written ---------------------------------------------------

def test_sigterm_during_an_atomic_write_leaves_no_temporary(tmp_path):
  import subprocess
  import sys
  script = f"""
import os, pathlib, signal, sys
sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parents[1])!r})
from sciimg_jax.core import atomic_files, interrupts
interrupts.install()
with atomic_files.atomic_path({str(tmp_path / 'case-t1n-inference.nii.gz')!r}) as tmp:
  pathlib.Path(tmp).write_bytes(b"half")
  os.kill(os.getpid(), signal.SIGTERM)
  signal.pause()
"""
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        timeout=60)
  assert proc.returncode == 143, proc.stderr
  assert proc.stderr.strip().splitlines() == [
      "stopped: terminated (SIGTERM); unfinished outputs were removed"], proc.stderr
  assert not list(tmp_path.iterdir())


def test_a_rerun_removes_the_stale_temporaries_of_what_it_writes(tmp_path):
  import os
  from sciimg_jax.core import atomic_files
  target = tmp_path / "case-t1n-inference.nii.gz"
  stale = tmp_path / ".case-t1n-inference.nii.gz.k2j4_x9a.nii.gz"  # a SIGKILLed run's
  other = tmp_path / ".other.nii.gz.k2j4_x9a.nii.gz"               # another file's: kept
  for p in (stale, other):
    p.write_bytes(b"half")
    os.utime(p, (atomic_files._STARTED - 60, atomic_files._STARTED - 60))
  atomic_files.write_text(target, "done")
  assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]


# --- IR regions: band counts that differ, a misnamed cube -------------------------------------

def write_region(root, name, bands, cube_name=None):
  folder = root / name
  folder.mkdir(parents=True)
  rng = np.random.default_rng(len(name) + bands)
  labels = np.zeros((16, 16), np.int64)
  labels[:, 8:] = 1
  cube = folder / (cube_name or f"{name}-ir.npy")
  np.save(cube, rng.uniform(0, 1, (16, 16, bands)).astype(np.float32))
  np.save(cube.with_suffix(".wavenumbers.npy"), np.linspace(1000.0, 1800.0, bands))
  np.save(folder / f"{name}-labels.npy", labels)
  return cube


def ir_options():
  from data_pipelines import ir_tfds
  return ir_tfds.PatchOptions(classes=("a", "b"), patch_size=4, per_class=2, block=8)


def test_ir_regions_with_different_band_counts_name_both_cubes(tmp_path):
  from data_pipelines import ir_tfds
  first = write_region(tmp_path / "data", "region-1", 4)
  other = write_region(tmp_path / "data", "region-2", 5)
  with pytest.raises(InputError, match=rf"{other}: has 5 bands, {first} has 4") as e:
    ir_tfds.build({"train": (tmp_path / "data", "all")}, ir_options(), tmp_path / "cache")
  assert "\n" not in str(e.value)


def test_an_ir_region_with_a_misnamed_cube_is_named_not_skipped_silently(tmp_path, caplog):
  from data_pipelines import ir_tfds
  write_region(tmp_path / "data", "region-1", 4)
  write_region(tmp_path / "data", "region-2", 4, cube_name="region-2-IR.npy")
  with caplog.at_level("WARNING"):
    regions = ir_tfds.find_regions(tmp_path / "data")
    ir_tfds.find_regions(tmp_path / "data")  # said once per folder
  assert [r[0] for r in regions] == ["region-1"]
  said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(said) == 1 and "region-2: region folder skipped: no region-2-ir.hdr" in said[0]
  assert "region-2-IR.npy" in said[0]


# --- a step count that is not positive ---------------------------------------------------------

@pytest.mark.parametrize("key,value,problem", [
    ("num_steps", -5, "must be a positive whole number of steps, got -5"),
    ("num_steps", 0, "must be a positive whole number of steps, got 0"),
    ("checkpoint_every", -1, "must be a whole number of steps >= 0, got -1")])
def test_a_step_count_that_is_not_positive_stops_before_any_work(tiny_config, tmp_path, key,
                                                                  value, problem):
  from sciimg_jax.core import slice_task
  from sciimg_jax.inpainting import slice_inputs
  tiny_config.train[key] = value
  tiny_config.data.root = str(tmp_path / "never-read")
  with pytest.raises(InputError, match=rf"^train.{key}: {problem}$"):
    slice_task.SliceTask(tiny_config, tmp_path / "w", slice_inputs.InpaintingSlices())
  assert not (tmp_path / "w").exists()


def test_a_refused_config_leaves_no_workdir_behind(tiny_config, tmp_path):
  """main.py (`jobs.run`) made the workdir before the job checked its config (issue 34): a
  refused run left an empty folder. Now the folders it made are removed again when empty; a
  folder that existed, or one the job wrote in, is kept."""
  from sciimg_jax import jobs
  tiny_config.train.num_steps = 0
  tiny_config.data.root = str(tmp_path / "never-read")
  for workdir in (tmp_path / "runs" / "w", tmp_path / "kept"):
    if workdir.name == "kept":
      workdir.mkdir()
    with pytest.raises(InputError, match=r"^train.num_steps: must be a positive whole number"):
      jobs.run(tiny_config, workdir)
  assert not (tmp_path / "runs").exists() and (tmp_path / "kept").is_dir()
  from sciimg_jax.core import atomic_files
  with pytest.raises(InputError, match="every case failed"):
    with atomic_files.job_folder(tmp_path / "wrote" / "w") as w:
      (w / "logs").mkdir()
      (w / "summary.json").write_text("{}")
      raise InputError("cases", "every case failed")
  assert (tmp_path / "wrote" / "w" / "summary.json").is_file()
  assert not (tmp_path / "wrote" / "w" / "logs").exists()  # an empty folder under it: removed


# --- float64 values beyond float32's range; an affine mismatch ---------------------------------

def test_float64_values_of_1e300_are_said_to_overflow_float32_not_nan(tmp_path):
  from sciimg_jax.core import nifti
  data = np.ones((4, 4, 4))
  data[0, 0, :3] = 1e300
  data[1, 1, 1] = np.nan
  path = tmp_path / "big.nii.gz"
  nib.save(nib.Nifti1Image(data, np.eye(4)), path)
  with pytest.raises(InputError, match=rf"^{path}: 3 voxels are finite but overflow float32 "
                     r"\(\|value\| up to 1e\+300, float32 holds up to 3.4e\+38\); rescale the "
                     r"image; 1 voxels are NaN or inf$"):
    nifti.load_volume(path)


def test_an_affine_mismatch_is_one_line_naming_both_files_and_the_largest_difference(tmp_path):
  from data_pipelines import brats_layout
  shifted = np.eye(4)
  shifted[0, 3] = 2.5
  shifted[1, 1] = 1.0005  # within tolerance alone; the shift is the largest difference
  case = write_case(tmp_path, "BraTS-GLI-00001-000",
                    {"t1n": brain_block((6, 6, 6), np.s_[1:5, 1:5, 1:5])})
  nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), shifted),
           case / "BraTS-GLI-00001-000-mask.nii.gz")
  with pytest.raises(InputError) as e:
    brats_layout.load_case(case, keys=("t1n", "mask"))
  assert str(e.value) == (f"{case / 'BraTS-GLI-00001-000-mask.nii.gz'}: affine differs from that "
                          "of BraTS-GLI-00001-000-t1n.nii.gz: largest difference 2.5 at [0, 3] "
                          "(2.5 vs 0; tolerance 0.001)")
