"""grain input pipeline over the TFDS slice datasets of `brats_slices`.

    sources = slice_sources(config.data, {"train": dir1, "eval": dir2}, cache_dir)
    train_it = make_train_iterator(config.data, sources["train"], seed=config.seed,
                                   batch_size_per_process=bs // jax.process_count())
    batch = next(train_it)
    for batch in make_eval_batches(config.data, sources["eval"], batch_size=16): ...

Every batch is a dict of numpy arrays:
    target   (B, H, W, 1) float32  normalised target, [-1, 1] (absent without target)
    cond     (B, H, W, C) float32  condition channels in `data.conditions` order
    case     (B,) str              case folder name
    slice    (B,) int32            slice index along `data.axis`
    lo, hi   (B,) float32          normalisation range (`intensity.denormalize`)
    orig_hw  (B, 2) int32          slice size before the centre pad/crop
    valid    (B,) bool             False only for padding in the last eval batch
where (H, W) = `data.image_size`. Slices are centre padded (images with -1, the
background after normalisation; masks with 0) or centre cropped;
`restore_slice_shape(x, orig_hw)` undoes it (cropped-away borders come back as
background).

The training iterator is a grain `DataLoaderIterator`: infinite, reshuffled every
epoch from `seed`, sharded over JAX processes, with `get_state()`/`set_state()`.
`sciimg_jax.core.checkpoint` saves it with orbax next to the train state
(`grain.checkpoint.CheckpointSave` / `CheckpointRestore`; each process writes its own
`process_<i>-of-<n>.json`).
"""

from absl import flags
import grain
import numpy as np

from data_pipelines import brats_layout
from data_pipelines import brats_slices
from sciimg_jax.core.volumes import center_pad_crop

def slice_sources(data_config, source_dirs, cache_dir):
  """Builds the slice dataset if needed; returns {split: random-access data source}.

  `source_dirs` maps split names to BraTS-layout folders. Uses `data_config.axis`,
  `.slices`, `.target` (may be '' for folders without ground truth) and `.conditions`.
  """
  builder = brats_slices.build(
      source_dirs, axis=data_config.axis, selection=data_config.slices,
      target=data_config.target, conditions=tuple(data_config.conditions),
      cache_dir=cache_dir)
  return {split: builder.as_data_source(split) for split in source_dirs}


def restore_slice_shape(x, orig_hw, fill=-1.0):
  """Undoes the centre pad/crop of one slice `x` (H, W, ...) -> (orig_h, orig_w, ...)."""
  return center_pad_crop(x, tuple(int(s) for s in orig_hw), fill)


def condition_fill(conditions):
  """Background value per condition channel: -1 for images, 0 for masks."""
  return np.array([0.0 if k in brats_layout.MASK_KEYS else -1.0 for k in conditions],
                  np.float32)


class PadCrop(grain.transforms.Map):
  """Turns a stored example into a fixed-size training element."""

  def __init__(self, image_size, conditions):
    self.image_size = tuple(int(s) for s in image_size)
    self.cond_fill = condition_fill(conditions)

  def map(self, element):
    cond = element["cond"]
    case = element["case"]
    out = {
        "cond": center_pad_crop(cond, self.image_size, self.cond_fill).astype(np.float32),
        "case": np.str_(case.decode() if isinstance(case, bytes) else case),
        "slice": np.int32(element["slice"]),
        "lo": np.float32(element["lo"]),
        "hi": np.float32(element["hi"]),
        "orig_hw": np.array(cond.shape[:2], np.int32),
        "valid": np.bool_(True),
    }
    if "target" in element:
      out["target"] = center_pad_crop(element["target"], self.image_size, -1.0).astype(
          np.float32)
    return out


def _stack(elements):
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def make_train_iterator(data_config, source, *, seed, batch_size_per_process,
                        shard_options=None):
  """An infinite, per-epoch shuffled, resumable iterator of training batches.

  Each JAX process reads a disjoint shard of every epoch
  (`grain.sharding.ShardByJaxProcess`; pass `shard_options` to override, e.g. in
  tests). Uses `data_config.num_workers` grain worker processes; a saved state only
  restores into an iterator with the same worker count, seed and data.
  """
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if data_config.num_workers and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside `absl.app.run` (tests,
    # notebooks) nothing has parsed them, so use their defaults.
    flags.FLAGS.mark_as_parsed()
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=True,
      num_epochs=None, seed=int(seed))
  loader = grain.DataLoader(
      data_source=source,
      sampler=sampler,
      operations=[PadCrop(data_config.image_size, data_config.conditions),
                  grain.transforms.Batch(int(batch_size_per_process), drop_remainder=True)],
      worker_count=int(data_config.num_workers))
  return iter(loader)


def make_batch(data_config, source, indices):
  """One batch of the records at `indices`, padded/cropped like every other batch."""
  transform = PadCrop(data_config.image_size, data_config.conditions)
  return _stack([transform.map(source[int(i)]) for i in indices])


def make_eval_batches(data_config, source, batch_size, num=None, *,
                      shard_index=0, shard_count=1):
  """Yields eval batches in stored order (case, slice): deterministic, no shuffle.

  The last batch is padded to `batch_size` with copies of its last example marked
  `valid=False`. `num` limits the number of batches. With `shard_count > 1`, shard
  `shard_index` reads records shard_index, shard_index + shard_count, ..., and all
  shards yield the same number of batches (padding as needed), so processes stay
  in step.
  """
  transform = PadCrop(data_config.image_size, data_config.conditions)
  indices = list(range(len(source)))[shard_index::shard_count]
  per_shard = -(-len(source) // shard_count)
  num_batches = -(-per_shard // batch_size)
  if num is not None:
    num_batches = min(num_batches, num)
  fallback = transform.map(source[0])
  for b in range(num_batches):
    elements = [transform.map(source[i]) for i in indices[b * batch_size:(b + 1) * batch_size]]
    pad = dict(elements[-1] if elements else fallback, valid=np.bool_(False))
    elements += [pad] * (batch_size - len(elements))
    yield _stack(elements)
