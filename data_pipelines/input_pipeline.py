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
epoch from `seed`, optionally with random lesion-shaped holes (`data.random_masks`,
`RandomLesionMasks`), each process its block of every global batch (`global_batches`),
with `get_state()`/`set_state()`.
`sciimg_jax.core.checkpoint` saves it with orbax next to the train state
(`grain.checkpoint.CheckpointSave` / `CheckpointRestore`; each process writes its own
`process_<i>-of-<n>.json`).
"""

from absl import flags
import grain
import numpy as np

from data_pipelines import brats_layout
from data_pipelines import global_batches
from data_pipelines import brats_slices
from sciimg_jax.core.errors import InputError
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


def lesion_mask(shape, region, rng, *, radius_range, max_blobs):
  """A random lesion-shaped 2D mask inside `region` (bool (H, W)); empty if `region` is.

  The union of 1..`max_blobs` lumpy ellipses: each has a radius drawn from
  `radius_range` (pixels), an aspect ratio in [0.6, 1], a random orientation and a
  boundary r(theta) = R (1 + sum_k a_k cos(k theta + phi_k)) with k = 2, 3, 4 and
  a_k <= 0.15; its centre is a random pixel of `region` (the first blob) or lies
  within the first blob's radius (the others), and the result is cut to `region`.
  These are the cross-sections a 3D lesion leaves on a slice, small to large.
  """
  candidates = np.argwhere(region)
  mask = np.zeros(shape, bool)
  if not len(candidates):
    return mask
  rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
  centre = candidates[rng.integers(len(candidates))].astype(np.float64)
  first_radius = None
  for _ in range(int(rng.integers(1, max_blobs + 1))):
    radius = rng.uniform(*radius_range)
    if first_radius is None:
      first_radius, here = radius, centre
    else:
      here = centre + rng.uniform(-first_radius, first_radius, 2)
    angle = rng.uniform(0, np.pi)
    dy, dx = rows - here[0], cols - here[1]
    u = np.cos(angle) * dy + np.sin(angle) * dx
    v = (-np.sin(angle) * dy + np.cos(angle) * dx) / rng.uniform(0.6, 1.0)
    theta, r = np.arctan2(v, u), np.hypot(u, v)
    edge = radius * (1 + sum(rng.uniform(0, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                             for k in (2, 3, 4)))
    mask |= r <= edge
  return mask & region


def lesion_mask_3d(shape, region, centre, rng, *, radius_range, max_blobs):
  """A random lesion-shaped 3D mask around voxel `centre`, inside `region` (bool `shape`).

  The 3D kin of `lesion_mask`: the union of 1..`max_blobs` lumpy ellipsoids, each with a
  radius from `radius_range` (voxels), axis ratios in [0.6, 1], a random orientation and a
  boundary R (1 + sum_j a_j cos(2 pi f_j (n . d_j) + phi_j)) over three random directions
  d_j (n the unit direction from the blob's centre, f_j in {1, 2}, a_j <= 0.15); the first
  blob is centred on `centre`, the others within its radius; cut to `region`. It crosses
  the neighbouring slices of any axis, as a real lesion does.
  """
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  mask = np.zeros(shape, bool)
  centre = np.asarray(centre, np.float64)
  first_radius = None
  for _ in range(int(rng.integers(1, max_blobs + 1))):
    radius = rng.uniform(*radius_range)
    if first_radius is None:
      first_radius, here = radius, centre
    else:
      here = centre + rng.uniform(-first_radius, first_radius, 3)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    local = (grid - here) @ rotation / np.array([1.0, *rng.uniform(0.6, 1.0, 2)])
    r = np.linalg.norm(local, axis=-1)
    direction = local / np.maximum(r, 1e-9)[..., None]
    edge = np.ones(shape)
    for _ in range(3):
      d = rng.standard_normal(3)
      edge += rng.uniform(0, 0.15) * np.cos(
          2 * np.pi * rng.integers(1, 3) * (direction @ (d / np.linalg.norm(d)))
          + rng.uniform(0, 2 * np.pi))
    mask |= r <= radius * edge
  return mask & region


class RandomLesionMasks(grain.transforms.RandomMap):
  """Training examples with random lesion-shaped holes, as BraTS inpainting entries train.

  With probability `probability` an example gets `lesion_mask` inside its brain
  (target > -1, the normalised background) and outside its own mask, with radii
  `radius_fraction` x the smaller image side: the hole is added to the `mask` channel and
  set to -1 in the `t1n-voided` channel. Slices without brain are left as they are.
  grain seeds `rng` per record from the sampler's seed, so resumed runs draw the same holes.
  """

  def __init__(self, conditions, *, probability, radius_fraction, max_blobs):
    conditions = list(conditions)
    self.voided, self.mask = conditions.index("t1n-voided"), conditions.index("mask")
    self.probability, self.max_blobs = float(probability), int(max_blobs)
    self.radius_fraction = tuple(float(f) for f in radius_fraction)

  def random_map(self, element, rng):
    if rng.uniform() >= self.probability:
      return element
    cond = element["cond"].copy()
    brain = (element["target"][..., 0] > -1.0) & (cond[..., self.mask] == 0)
    side = min(brain.shape)
    hole = lesion_mask(brain.shape, brain, rng, max_blobs=self.max_blobs,
                       radius_range=tuple(f * side for f in self.radius_fraction))
    cond[..., self.mask] = np.where(hole, 1.0, cond[..., self.mask])
    cond[..., self.voided] = np.where(hole, -1.0, cond[..., self.voided])
    return dict(element, cond=cond)


def check_random_masks(data_config):
  """Raises InputError for `data.random_masks` settings that cannot work (probability > 0)."""
  r = data_config.random_masks
  if not 0.0 <= r.probability <= 1.0:
    raise InputError("data.random_masks.probability", f"must be in [0, 1], got {r.probability!r}")
  lo, hi = r.radius_fraction
  if not 0 < lo <= hi:
    raise InputError("data.random_masks.radius_fraction",
                     f"must be (low, high) with 0 < low <= high, got {tuple(r.radius_fraction)}")
  if r.max_blobs < 1:
    raise InputError("data.random_masks.max_blobs", f"must be >= 1, got {r.max_blobs!r}")
  if not {"t1n-voided", "mask"} <= set(data_config.conditions):
    raise InputError("data.random_masks", "needs 't1n-voided' and 'mask' among data.conditions")
  if not data_config.target:
    raise InputError("data.random_masks", "needs data.target (the brain comes from it)")


def _stack(elements):
  return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


def make_train_iterator(data_config, source, *, seed, batch_size_per_process, process=None):
  """An infinite, per-epoch shuffled, resumable iterator of training batches.

  This process's block of global batches that do not depend on the number of processes
  (`global_batches.train_loader`; `process=(index, count)` overrides JAX's, in tests).
  Uses `data_config.num_workers` grain worker processes; a saved state only restores into
  an iterator with the same worker count, seed and data.
  """
  if data_config.num_workers and not flags.FLAGS.is_parsed():
    # grain's worker processes read absl flags; outside `absl.app.run` (tests,
    # notebooks) nothing has parsed them, so use their defaults.
    flags.FLAGS.mark_as_parsed()
  operations = [PadCrop(data_config.image_size, data_config.conditions)]
  random_masks = data_config.get("random_masks")
  if random_masks is not None and random_masks.probability:
    check_random_masks(data_config)
    operations.append(RandomLesionMasks(
        data_config.conditions, probability=random_masks.probability,
        radius_fraction=random_masks.radius_fraction, max_blobs=random_masks.max_blobs))
  return global_batches.train_loader(
      source, seed=seed, batch_size_per_process=batch_size_per_process, operations=operations,
      num_workers=data_config.num_workers, process=process)


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
