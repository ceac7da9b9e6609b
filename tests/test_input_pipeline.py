"""Tests for intensity normalisation, the TFDS slice builder and the grain pipeline."""

import pathlib
import pickle
import re

import grain
import ml_collections
import nibabel as nib
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.inpainting import common
from data_pipelines import brats_slices
from data_pipelines import input_pipeline
from data_pipelines import sources as data_sources
from sciimg_jax.core import intensity
from sciimg_jax.core import nifti
from sciimg_jax.core.errors import InputError
from tolerances import float32_tolerance

SHAPE = (24, 28, 20)
AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
# Per case: brain box and mask box, as (start, stop) per voxel axis.
TRAIN_BOXES = [
    (((3, 21), (4, 25), (2, 17)), ((8, 12), (10, 14), (6, 9))),
    (((2, 22), (3, 26), (1, 19)), ((5, 11), (12, 20), (10, 12))),
    (((4, 20), (5, 24), (3, 16)), ((9, 10), (6, 9), (4, 15))),
]
EVAL_BOXES = [
    (((3, 21), (2, 27), (0, 20)), ((10, 16), (10, 12), (2, 5))),
]


def _write_case(root, name, brain_box, mask_box, seed, shape=SHAPE, mask_shape=None):
  rng = np.random.default_rng(seed)
  brain = np.zeros(shape, bool)
  brain[tuple(slice(*b) for b in brain_box)] = True
  mask = np.zeros(mask_shape or shape, np.float32)
  mask[tuple(slice(*b) for b in mask_box)] = 1
  t1n = np.where(brain, rng.uniform(10, 100, shape), 0).astype(np.float32)
  voided = t1n.copy()
  voided[tuple(slice(*b) for b in mask_box)] = 0
  affine = np.diag([2.0, 2.0, 2.0, 1.0])
  d = pathlib.Path(root) / name
  for key, vol in (("t1n", t1n), ("t1n-voided", voided), ("mask", mask)):
    nifti.save_volume(d / f"{name}-{key}.nii.gz", vol, affine, dtype=np.float32)
  return d


def _write_split(root, boxes, seed):
  for i, (brain_box, mask_box) in enumerate(boxes):
    _write_case(root, f"BraTS-GLI-{seed:03d}{i:02d}-000", brain_box, mask_box, seed + i)
  return root


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  return {"train": _write_split(root / "train", TRAIN_BOXES, 100),
          "eval": _write_split(root / "eval", EVAL_BOXES, 200),
          "cache": root / "cache"}


def _data_config(**overrides):
  c = common.get_base_config().data
  c.image_size = (32, 24)
  for k, v in overrides.items():
    c[k] = v
  return c


def _sources(dirs, **overrides):
  c = _data_config(**overrides)
  return c, input_pipeline.slice_sources(
      c, {"train": dirs["train"], "eval": dirs["eval"]}, dirs["cache"])


def _expected_count(boxes, axis, selection):
  a = AXES[axis]
  return sum((b if selection == "brain" else m)[a][1] - (b if selection == "brain" else m)[a][0]
             for b, m in boxes)


def _load(case_dir, key):
  return np.asarray(nib.load(str(case_dir / f"{case_dir.name}-{key}.nii.gz")).dataobj,
                    dtype=np.float32)


# --- intensity ---------------------------------------------------------------------

def test_percentile_range_and_round_trip():
  rng = np.random.default_rng(0)
  voided = np.zeros((10, 10, 10), np.float32)
  voided[2:8, 2:8, 2:8] = rng.uniform(5, 50, (6, 6, 6))
  lo, hi = intensity.percentile_range(voided)
  assert lo == 0.0  # 0.5 percentile of a volume with background.
  # ours interpolates in float64; numpy's percentile of float32 in float32 (the fraction, the
  # difference, the product, the sum: <= 5 roundings on values <= hi)
  assert hi == pytest.approx(np.percentile(voided, 99.5), rel=float32_tolerance(1.0, 5))
  lo2, hi2 = intensity.percentile_range(voided - 3)  # Negative lower bound is clipped.
  # voided - 3 rounds each float32 voxel once
  assert lo2 == 0.0 and hi2 == pytest.approx(hi - 3, abs=float32_tolerance(hi, 1))
  assert lo2 == 0.0
  x = rng.uniform(-20, 80, (50,)).astype(np.float32)
  y = intensity.normalize(x, 10.0, 40.0)
  assert y.min() >= -1 and y.max() <= 1
  # float32 round trip: x - lo, / (hi - lo), - 1, then + 1, x (hi - lo), + lo (2x and 0.5x are
  # exact): 6 roundings on values <= hi = 40
  np.testing.assert_allclose(intensity.denormalize(y, 10.0, 40.0), np.clip(x, 10, 40),
                             rtol=0, atol=float32_tolerance(40.0, 6))
  with pytest.raises(InputError, match="no intensity range"):
    intensity.percentile_range(np.full((4, 4, 4), 3.0), where="case.nii.gz")


# --- builder -----------------------------------------------------------------------

@pytest.mark.parametrize("axis", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("selection", ["brain", "mask"])
def test_builder_counts_and_slices(dirs, axis, selection):
  _, sources = _sources(dirs, axis=axis, slices=selection)
  assert len(sources["train"]) == _expected_count(TRAIN_BOXES, axis, selection)
  assert len(sources["eval"]) == _expected_count(EVAL_BOXES, axis, selection)

  examples = [sources["train"][i] for i in range(len(sources["train"]))]
  keys = [(e["case"], int(e["slice"])) for e in examples]
  assert keys == sorted(keys)  # Stored in (case, slice) order.
  a = AXES[axis]
  for e in examples[::5]:
    case_dir = dirs["train"] / e["case"].decode()
    voided, t1n, mask = (_load(case_dir, k) for k in ("t1n-voided", "t1n", "mask"))
    lo = max(np.percentile(voided, 0.5), 0.0)
    hi = np.percentile(voided, 99.5)
    # stored as float32 (1 rounding) against numpy's float32 percentile (<= 5, as above)
    assert (e["lo"], e["hi"]) == pytest.approx((lo, hi), rel=float32_tolerance(1.0, 1 + 5))
    k = int(e["slice"])
    np.testing.assert_array_equal(
        e["target"][..., 0], np.take(intensity.normalize(t1n, e["lo"], e["hi"]), k, axis=a))
    np.testing.assert_array_equal(
        e["cond"][..., 0], np.take(intensity.normalize(voided, e["lo"], e["hi"]), k, axis=a))
    np.testing.assert_array_equal(e["cond"][..., 1], np.take(mask, k, axis=a))


def test_cache_follows_keys_and_target(dirs):
  _, full = _sources(dirs)
  _, fewer = _sources(dirs, conditions=("t1n-voided",))
  _, no_target = _sources(dirs, target="")
  assert full["train"][0]["cond"].shape[-1] == 2
  assert fewer["train"][0]["cond"].shape[-1] == 1
  assert "target" not in no_target["train"][0]
  dirs_used = {p.name for p in dirs["cache"].iterdir()}
  assert len(dirs_used) >= 3  # One fingerprinted data_dir per key set.
  c = _data_config(target="")
  batch = next(iter(input_pipeline.make_eval_batches(c, no_target["eval"], 2)))
  assert "target" not in batch and batch["cond"].shape == (2, 32, 24, 2)


def test_source_pickles_for_grain_workers(dirs):
  _, sources = _sources(dirs)
  copy = pickle.loads(pickle.dumps(sources["train"]))
  assert len(copy) == len(sources["train"])
  np.testing.assert_array_equal(copy[3]["cond"], sources["train"][3]["cond"])


def test_cache_rebuilds_when_source_changes(tmp_path, capfd):
  src = _write_split(tmp_path / "src", TRAIN_BOXES[:1], 5)
  c = _data_config()
  n1 = len(input_pipeline.slice_sources(c, {"train": src}, tmp_path / "cache")["train"])
  printed = capfd.readouterr()
  assert "Preparing axial-mask slices" in printed.out
  assert "Downloading" not in printed.out + printed.err  # nothing is downloaded
  assert "downloaded and prepared" not in printed.out + printed.err
  _write_split(tmp_path / "src", TRAIN_BOXES[:2], 5)  # A case is added.
  n2 = len(input_pipeline.slice_sources(c, {"train": src}, tmp_path / "cache")["train"])
  assert (n1, n2) == (_expected_count(TRAIN_BOXES[:1], "axial", "mask"),
                      _expected_count(TRAIN_BOXES[:2], "axial", "mask"))


# --- batches -----------------------------------------------------------------------

def test_batch_shapes_dtypes_and_padding(dirs):
  c, sources = _sources(dirs)  # axial: slices are (24, 28) -> (32, 24)
  it = input_pipeline.make_train_iterator(c, sources["train"], seed=0, batch_size_per_process=4)
  batch = next(it)
  assert batch["target"].shape == (4, 32, 24, 1) and batch["target"].dtype == np.float32
  assert batch["cond"].shape == (4, 32, 24, 2) and batch["cond"].dtype == np.float32
  for key in ("case", "slice", "lo", "hi", "valid"):
    assert batch[key].shape == (4,)
  assert batch["slice"].dtype == np.int32 and batch["lo"].dtype == np.float32
  np.testing.assert_array_equal(batch["orig_hw"], [[24, 28]] * 4)
  # Pad rows are background (-1 for images, 0 for the mask); the crop is centred.
  assert np.all(batch["target"][:, :4] == -1) and np.all(batch["target"][:, 28:] == -1)
  assert np.all(batch["cond"][:, :4, :, 0] == -1) and np.all(batch["cond"][:, :4, :, 1] == 0)
  case_dir = dirs["train"] / str(batch["case"][0])
  raw = np.take(_load(case_dir, "t1n"), int(batch["slice"][0]), axis=2)
  want = intensity.normalize(raw, batch["lo"][0], batch["hi"][0])[:, 2:26]
  np.testing.assert_array_equal(batch["target"][0, 4:28, :, 0], want)
  back = intensity.denormalize(
      input_pipeline.restore_slice_shape(batch["target"][0, ..., 0], batch["orig_hw"][0]),
      batch["lo"][0], batch["hi"][0])
  # the float32 round trip (6 roundings on values <= hi, as in test_percentile_range_and_round_trip)
  # and lo, hi stored as float32 (the pipeline normalised with the float64 values): 2 more
  hi = float(batch["hi"][0])
  np.testing.assert_allclose(back[:, 2:26], np.clip(raw, batch["lo"][0], batch["hi"][0])[:, 2:26],
                             rtol=0, atol=float32_tolerance(hi, 6 + 2))


def test_eval_batches_deterministic_and_padded(dirs):
  c, sources = _sources(dirs, slices="brain")
  n = len(sources["eval"])
  batches = list(input_pipeline.make_eval_batches(c, sources["eval"], batch_size=8))
  assert len(batches) == -(-n // 8)
  assert sum(int(b["valid"].sum()) for b in batches) == n
  assert all(b["target"].shape == (8, 32, 24, 1) for b in batches)
  slices = np.concatenate([b["slice"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(slices, np.arange(20))  # Eval brain box spans z = 0..19.
  again = list(input_pipeline.make_eval_batches(c, sources["eval"], batch_size=8, num=2))
  assert len(again) == 2
  np.testing.assert_array_equal(again[1]["cond"], batches[1]["cond"])
  shards = [list(input_pipeline.make_eval_batches(c, sources["eval"], 8, shard_index=i,
                                                  shard_count=3)) for i in range(3)]
  assert len({len(s) for s in shards}) == 1
  seen = np.concatenate([b["slice"][b["valid"]] for s in shards for b in s])
  np.testing.assert_array_equal(np.sort(seen), np.arange(20))


# --- resumable training iterator ---------------------------------------------------

def _take(it, num):
  return [next(it) for _ in range(num)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["case"], b["case"])
    np.testing.assert_array_equal(a["slice"], b["slice"])
    np.testing.assert_array_equal(a["target"], b["target"])


def test_train_iterator_resume_and_epochs(dirs):
  c, sources = _sources(dirs, slices="brain")
  src = sources["train"]  # 15 + 18 + 13 = 46 slices
  make = lambda: input_pipeline.make_train_iterator(c, src, seed=3, batch_size_per_process=4)
  it = make()
  _take(it, 10)  # 40 examples: most of epoch 1.
  state = it.get_state()
  want = _take(it, 6)  # Crosses into epoch 2.
  it2 = make()
  it2.set_state(state)
  _assert_same(_take(it2, 6), want)

  # Same seed -> same stream; one epoch covers every slice once; epochs differ in order.
  one = input_pipeline.make_train_iterator(c, src, seed=3, batch_size_per_process=1)
  ids = [(str(b["case"][0]), int(b["slice"][0])) for b in _take(one, 2 * len(src))]
  assert len(set(ids[:len(src)])) == len(src)
  assert ids[:len(src)] != ids[len(src):]
  first = _take(make(), 3)
  _assert_same(first, _take(make(), 3))
  other = input_pipeline.make_train_iterator(c, src, seed=4, batch_size_per_process=4)
  assert any((a["slice"] != b["slice"]).any() for a, b in zip(first, _take(other, 3)))


def test_lesion_mask_lies_in_its_region():
  region = np.zeros((40, 48), bool)
  region[5:35, 8:44] = True
  sizes = []
  for seed in range(20):
    hole = input_pipeline.lesion_mask(region.shape, region, np.random.default_rng(seed),
                                      radius_range=(2.0, 8.0), max_blobs=3)
    assert hole.any() and not (hole & ~region).any()
    sizes.append(hole.sum())
    again = input_pipeline.lesion_mask(region.shape, region, np.random.default_rng(seed),
                                       radius_range=(2.0, 8.0), max_blobs=3)
    np.testing.assert_array_equal(hole, again)
  assert min(sizes) < 60 < max(sizes)  # small and large holes
  assert not input_pipeline.lesion_mask(region.shape, np.zeros_like(region),
                                        np.random.default_rng(0), radius_range=(2.0, 8.0),
                                        max_blobs=3).any()


def test_random_masks_void_brain_outside_the_own_mask(dirs):
  c, sources = _sources(dirs, slices="brain")
  c.random_masks.probability = 1.0
  it = input_pipeline.make_train_iterator(c, sources["train"], seed=5, batch_size_per_process=4)
  plain_c, _ = _sources(dirs, slices="brain")
  plain = input_pipeline.make_train_iterator(plain_c, sources["train"], seed=5,
                                             batch_size_per_process=4)
  added = 0
  for a, b in zip(_take(it, 6), _take(plain, 6)):
    np.testing.assert_array_equal(a["target"], b["target"])  # same examples, same order
    voided, mask = a["cond"][..., 0], a["cond"][..., 1]
    own = b["cond"][..., 1] > 0
    new = (mask > 0) & ~own
    assert np.all(mask[own] == 1)                               # the own mask is kept
    assert np.all(voided[new] == -1) and np.all(a["target"][..., 0][new] > -1)  # brain, voided
    np.testing.assert_array_equal(voided[~new], b["cond"][..., 0][~new])
    added += new.sum()
  assert added > 0
  # Resume draws the same holes.
  it = input_pipeline.make_train_iterator(c, sources["train"], seed=5, batch_size_per_process=4)
  _take(it, 3)
  state, want = it.get_state(), _take(it, 3)
  again = input_pipeline.make_train_iterator(c, sources["train"], seed=5, batch_size_per_process=4)
  again.set_state(state)
  for a, b in zip(_take(again, 3), want):
    np.testing.assert_array_equal(a["cond"], b["cond"])


def test_random_mask_settings_are_checked(dirs):
  c, sources = _sources(dirs, slices="brain")
  c.random_masks.probability = 1.5
  with pytest.raises(InputError, match=r"data\.random_masks\.probability: must be in \[0, 1\]"):
    input_pipeline.make_train_iterator(c, sources["train"], seed=0, batch_size_per_process=2)
  for key, value, problem in [("random_masks.radius_fraction", (0.2, 0.1), "0 < low <= high"),
                              ("random_masks.max_blobs", 0, "must be >= 1"),
                              ("conditions", ("t1n-voided",), "needs 't1n-voided' and 'mask'"),
                              ("target", "", "needs data.target")]:
    bad = _data_config(slices="brain")
    bad.random_masks.probability = 0.5
    *path, last = key.split(".")
    (bad[path[0]] if path else bad)[last] = value
    with pytest.raises(InputError, match=re.escape(problem)):
      input_pipeline.check_random_masks(bad)


def test_train_iterator_orbax_checkpoint(dirs, tmp_path):
  c, sources = _sources(dirs)
  make = lambda: input_pipeline.make_train_iterator(
      c, sources["train"], seed=1, batch_size_per_process=2)
  it = make()
  _take(it, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
    mgr.save(5, args=ocp.args.Composite(
        step=ocp.args.JsonSave({"step": 5}), data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  want = _take(it, 4)
  it2 = make()
  with ocp.CheckpointManager(tmp_path / "ckpt") as mgr:
    restored = mgr.restore(mgr.latest_step(), args=ocp.args.Composite(
        step=ocp.args.JsonRestore(), data=grain.checkpoint.CheckpointRestore(it2)))
  assert restored["step"] == {"step": 5}
  _assert_same(_take(it2, 4), want)


def test_process_blocks_make_the_one_process_batches(dirs):
  """2 processes' blocks, stacked, are the batches of 1 process with both processes' examples:
  the global batch of every step does not depend on the number of processes."""
  c, sources = _sources(dirs, slices="brain")
  c.random_masks.probability = 0.8  # random holes too: drawn per record, alike in both
  make = lambda process, b: input_pipeline.make_train_iterator(
      c, sources["train"], seed=0, batch_size_per_process=b, process=process)
  one = _take(make((0, 1), 4), 6)
  blocks = [_take(make((i, 2), 2), 6) for i in range(2)]
  for n, batch in enumerate(one):
    for key, value in batch.items():
      both = np.concatenate([np.asarray(blocks[0][n][key]), np.asarray(blocks[1][n][key])])
      np.testing.assert_array_equal(both, np.asarray(value), err_msg=key)
    assert len(blocks[0][n]["slice"]) == 2


# --- bad input ---------------------------------------------------------------------

def test_missing_or_empty_folder(tmp_path):
  c = _data_config()
  missing = tmp_path / "nope"
  with pytest.raises(InputError) as e:
    input_pipeline.slice_sources(c, {"train": missing}, tmp_path / "cache")
  assert e.value.where == str(missing.resolve())
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(InputError, match="no case folders") as e:
    input_pipeline.slice_sources(c, {"train": empty}, tmp_path / "cache")
  assert e.value.where == str(empty.resolve())


def test_mask_of_other_shape_names_the_file(tmp_path):
  (brain_box, mask_box), = EVAL_BOXES
  case = _write_case(tmp_path / "src", "BraTS-GLI-00001-000", brain_box, mask_box, 0,
                     mask_shape=(24, 28, 19))
  with pytest.raises(InputError, match="shape") as e:
    input_pipeline.slice_sources(_data_config(), {"train": tmp_path / "src"}, tmp_path / "cache")
  assert e.value.where == str(case / f"{case.name}-mask.nii.gz")


def test_unknown_key_or_axis(tmp_path):
  with pytest.raises(InputError, match="data.conditions"):
    input_pipeline.slice_sources(_data_config(conditions=("t1c",)), {"train": tmp_path},
                                 tmp_path / "cache")
  with pytest.raises(InputError, match="data.axis"):
    input_pipeline.slice_sources(_data_config(axis="oblique"), {"train": tmp_path},
                                 tmp_path / "cache")


def test_cache_dir_defaults_to_the_workdir(tmp_path):
  data = ml_collections.ConfigDict({"cache_dir": ""})
  assert data_sources.cache_dir(data, str(tmp_path)) == tmp_path / "data"
  data.cache_dir = str(tmp_path / "shared")
  assert data_sources.cache_dir(data, tmp_path / "run") == tmp_path / "shared"
