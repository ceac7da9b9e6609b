"""Whole-volume cases for volume-to-volume translation (Diff-Ensembler), prepared once.

A BraTS-layout folder (`brats_layout`) becomes one array per case,

    <cache_dir>/volumes-<fingerprint>/<split>/<case>.npy    (X, Y, Z, C) float32
    <cache_dir>/volumes-<fingerprint>/<split>/<case>.json   normalisation ranges, grid

on the grid `data.volume_shape` (centre padded with background or cropped), with the
channels `[target, *conditions, mask]`:

    target      `data.target`, an image key normalised to [-1, 1] (`intensity.normalize`
                with the 0.5/99.5 percentiles of that volume), or a mask key as 0/1 labels
    conditions  `data.conditions`: image keys normalised the same way, or `<key>:pool<f>`,
                the key average-pooled by f along every axis and repeated back (nearest),
                as the released Diff-Ensembler code makes its super-resolution input
    mask        the brain: voxels where any loaded image is non-zero

Arrays are read memory-mapped, so a dataset of real BraTS volumes needs no more memory
than the slices and crops in flight. Two grain data sources read them:

    SliceSource(cases, axis)     every brain slice along an axis, 2D examples
    CropSource(cases, crop)      one random 3D crop per case and epoch (`RandomCrop`), or
                                 the whole volume (crop ())

Both give {'target': (..., 1), 'cond': (..., C_cond)} with the condition channels
`[*conditions, position x, y, z, mask]` (`channel_names`); the position is the voxel's
coordinate in the whole volume, in [-1, 1]. With `data.residual` the target is
(target - conditions[0]) / 2.
"""

import dataclasses
import hashlib
import json
import math
import pathlib
import threading

import grain
import numpy as np
from absl import logging

from data_pipelines import brats_layout
from data_pipelines import global_batches
from data_pipelines import processes
from sciimg_jax.core import atomic_files
from sciimg_jax.core import intensity
from sciimg_jax.core import slice_context
from sciimg_jax.core import volumes as vol
from sciimg_jax.core.errors import InputError

_FORMAT_VERSION = 2  # 2: metadata records the brain voxels the grid cuts away
POSITION = ("pos-x", "pos-y", "pos-z")


def parse_condition(spec):
  """'t2f:pool4' -> ('t2f', 4); 't1n' -> ('t1n', 1). Stops on an unknown key or operation."""
  key, _, op = spec.partition(":")
  if key not in brats_layout.IMAGE_KEYS:
    raise InputError("data.conditions", f"{spec!r}: {key!r} is not an image key; known: "
                     f"{', '.join(brats_layout.IMAGE_KEYS)}")
  if not op:
    return key, 1
  if not (op.startswith("pool") and op[4:].isdigit() and int(op[4:]) >= 1):
    raise InputError("data.conditions", f"{spec!r}: unknown operation {op!r} (use '<key>:pool<f>')")
  return key, int(op[4:])


def channel_names(data):
  """The channels of a case (a chain's `cond`): conditions, position, mask."""
  return tuple(data.conditions) + POSITION + ("mask",)


def slice_channel_names(data):
  """The channels of a 2D example: the case's, then the conditions of the `data.context`
  slices on each side (`slice_context`; background -1 beyond the volume)."""
  return channel_names(data) + slice_context.names(tuple(data.conditions),
                                                   int(data.get("context", 0)))


def context_fills(data):
  """{condition: background} of the channels a 2.5D model sees around its slice."""
  return {c: -1.0 for c in data.conditions}


def channel_indices(data, own, what="model"):
  """Indices, among `data`'s channels, of the channels a network trained on `own` takes."""
  names, wanted = list(channel_names(data)), channel_names(own)
  missing = [c for c in wanted if c not in names]
  if missing:
    raise InputError("data.conditions", f"the {what} takes {missing}, which "
                     f"{tuple(data.conditions)} lack")
  return [names.index(c) for c in wanted]


def check_data_config(data):
  """Stops on a target, condition or grid the cases cannot be prepared with."""
  if data.target not in brats_layout.IMAGE_KEYS + brats_layout.MASK_KEYS:
    raise InputError("data.target", f"unknown key {data.target!r}")
  if not data.conditions:
    raise InputError("data.conditions", "needs at least one condition")
  shape = tuple(data.volume_shape)
  if len(shape) != 3 or min(shape) < 1:
    raise InputError("data.volume_shape", f"expected 3 positive sizes, got {shape}")
  for spec in data.conditions:
    _, factor = parse_condition(spec)
    if any(n % factor for n in shape):
      raise InputError("data.volume_shape", f"shape {shape} is not divisible by the "
                       f"downsampling factor {factor} of condition {spec!r} along every axis")
  if data.get("residual") and data.target in brats_layout.MASK_KEYS:
    raise InputError("data.residual", "a residual target needs an image target")


def grid_multiple(data):
  """What every axis of `data.volume_shape` must divide by: the conditions' downsampling
  factors' least common multiple (`check_data_config`)."""
  return math.lcm(*(parse_condition(spec)[1] for spec in data.conditions))


def required_keys(data, with_target=True):
  keys = [data.target] if with_target else []
  keys += [parse_condition(s)[0] for s in data.conditions]
  return tuple(dict.fromkeys(keys))


def _pool_repeat(x, factor):
  if factor == 1:
    return x
  X, Y, Z = x.shape
  f = factor
  low = x.reshape(X // f, f, Y // f, f, Z // f, f).mean(axis=(1, 3, 5))
  for axis in range(3):
    low = np.repeat(low, f, axis=axis)
  return low.astype(np.float32)


def prepare_case(case_dir, data, with_target=True):
  """(array (X, Y, Z, C), metadata dict) of one case folder on the `data.volume_shape` grid."""
  keys = required_keys(data, with_target)
  case = brats_layout.load_case(case_dir, keys=keys)
  shape = tuple(int(s) for s in data.volume_shape)
  normalised, ranges = {}, {}
  brain = np.zeros(case.shape, bool)
  for key, v in case.volumes.items():
    if key in brats_layout.MASK_KEYS:
      normalised[key] = v
      continue
    brain |= v != 0
    lo, hi = intensity.percentile_range(v, where=brats_layout.case_file(case_dir, key))
    ranges[key] = (lo, hi)
    normalised[key] = intensity.normalize(v, lo, hi)
  cut = vol.outside_center_crop(brain, shape)
  if cut:
    where = brats_layout.case_file(case_dir, next(k for k in case.volumes
                                                  if k not in brats_layout.MASK_KEYS))
    multiple = grid_multiple(data)
    divides = f", each axis divisible by the downsampling factor {multiple}" if multiple > 1 else ""
    message = (f"the case is {case.shape} and {cut:,} of {int(brain.sum()):,} brain voxels lie "
               f"outside the centre crop data.volume_shape={shape}; its outputs would be "
               f"background there. Use data.volume_shape of at least "
               f"{vol.covering_shape(brain, shape, multiple)} (the smallest grid that holds the "
               f"brain{divides}; models are tied to their grid), or "
               f"data.crop_brain=True to accept the loss")
    if not data.get("crop_brain", False):
      raise InputError(where, message)
    logging.warning("%s: %s (data.crop_brain=True: cropping)", where, message.split(";")[0])
  fill = lambda k: 0.0 if k in brats_layout.MASK_KEYS else -1.0
  grid = {k: vol.center_pad_crop(v, shape, fill(k)) for k, v in normalised.items()}
  mask = vol.center_pad_crop(brain.astype(np.float32), shape, 0.0)
  # Without ground truth the target channel holds zeros, so every array has one layout.
  channels = [grid[data.target] if with_target else np.zeros(shape, np.float32)]
  for spec in data.conditions:
    key, factor = parse_condition(spec)
    channels.append(_pool_repeat(grid[key], factor))
  channels.append(mask)
  meta = {"case": case.name, "directory": str(pathlib.Path(case_dir).resolve()),
          "shape": list(case.shape), "ranges": ranges, "affine": case.affine.tolist(),
          "has_target": bool(with_target), "brain_voxels_cut": cut}
  return np.stack(channels, axis=-1).astype(np.float32), meta


_OPEN_LOCK = threading.Lock()


@dataclasses.dataclass
class PreparedCase:
  """One prepared case: its memory-mapped array (opened once) and metadata."""
  name: str
  path: pathlib.Path
  meta: dict
  _array: object = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def array(self):
    # One np.load per case, under a lock: grain reads from threads, and CPython 3.11's
    # parser (np.load reads the header with ast.literal_eval) is not thread-safe.
    with _OPEN_LOCK:
      if self._array is None:
        self._array = np.load(self.path, mmap_mode="r")
    return self._array

  def __getstate__(self):  # grain worker processes reopen the file, not a copy of it
    return dict(self.__dict__, _array=None)

  @property
  def directory(self):
    return pathlib.Path(self.meta["directory"])


def fingerprint(root, cases, keys, settings):
  """16 hex digits that change with `settings` (a JSON-able dict), the folder `root` and
  the size and time of each case's files of `keys` (a key a case lacks is skipped)."""
  h = hashlib.sha256(json.dumps(settings).encode())
  h.update(str(pathlib.Path(root).resolve()).encode())
  for case_dir in cases:
    for key in keys:
      path = brats_layout.case_file(case_dir, key)
      if path.is_file():
        st = path.stat()
        h.update(f"\n{case_dir.name}/{key}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


@processes.process_0_first
def prepare(root, data, cache_dir, *, with_target=True, split="cases"):
  """The prepared cases of a BraTS-layout folder (written once into `cache_dir`, atomically)."""
  check_data_config(data)
  keys = required_keys(data, with_target)
  cases, incomplete = brats_layout.scan_cases(root, keys)
  if incomplete:  # a case without a modality the job needs is an error, not a silent skip
    name, reason = next(iter(incomplete.items()))
    raise InputError(pathlib.Path(root) / name, f"{reason} (needed: {', '.join(keys)}); "
                     f"{len(incomplete)} incomplete case folder(s) in {root}")
  if not cases:
    brats_layout.find_cases(root, keys)  # raises: no case folders
  settings = {"v": _FORMAT_VERSION, "target": data.target if with_target else "",
              "conditions": list(data.conditions), "shape": list(data.volume_shape)}
  out = pathlib.Path(cache_dir) / f"volumes-{fingerprint(root, cases, keys, settings)}" / split
  prepared = cached_cases(cases, out, lambda case_dir: prepare_case(case_dir, data, with_target))
  for case in prepared:  # prepared earlier with data.crop_brain=True
    if case.meta.get("brain_voxels_cut") and not data.get("crop_brain", False):
      raise InputError(case.directory, f"{case.meta['brain_voxels_cut']:,} brain voxels lie "
                       f"outside the centre crop data.volume_shape={tuple(data.volume_shape)}; "
                       f"enlarge it, or set data.crop_brain=True to accept the loss")
  return prepared


def cached_cases(cases, out, make):
  """[PreparedCase] of the case folders `cases`: `make(case_dir) -> (array, metadata)` is
  written once per case into `out` (`<case>.npy`, `<case>.json`, atomically) and reused."""
  prepared = []
  for case_dir in cases:
    path, meta_path = out / f"{case_dir.name}.npy", out / f"{case_dir.name}.json"
    if not (path.is_file() and meta_path.is_file()):
      array, meta = make(case_dir)
      with atomic_files.atomic_path(path) as tmp:
        np.save(tmp, array)
      atomic_files.write_json(meta_path, meta)
    prepared.append(PreparedCase(case_dir.name, path, json.loads(meta_path.read_text())))
  return prepared


def split_example(data, array):
  """(target, conditions, mask) of a prepared (..., C) array (a slice, a crop or a volume)."""
  target = array[..., :1]
  conditions = array[..., 1:1 + len(data.conditions)]
  if data.get("residual"):
    target = (target - conditions[..., :1]) / 2.0
  return target, conditions, array[..., -1:]


def image_of(data, x, reference):
  """The target image of a prediction `x` in the target's space: 2 x + reference with
  `data.residual` (the inverse of `split_example`'s (target - conditions[0]) / 2), else x.
  `reference` is conditions[0], shaped like x."""
  return 2.0 * x + reference if data.get("residual") else x


def example(data, array, position):
  """The training example of a prepared slice or crop `array` and its `position` channels."""
  target, conditions, mask = split_example(data, array)
  return {"target": np.ascontiguousarray(target, np.float32),
          "cond": np.concatenate([conditions, position, mask], axis=-1).astype(np.float32)}


class SliceSource(grain.sources.RandomAccessDataSource):
  """Every slice along `axis` that meets the brain, of every prepared case."""

  def __init__(self, cases, data, axis):
    self.cases, self.data, self.axis = cases, data, vol.AXES[axis]
    self.position = vol.position_embedding(tuple(data.volume_shape))
    other = tuple(a for a in range(3) if a != self.axis)
    self.index = [(i, int(k)) for i, c in enumerate(cases)
                  for k in np.flatnonzero(np.asarray(c.array[..., -1]).any(axis=other))]
    if not self.index:
      raise InputError("data", "no case has any brain voxel")

  def __len__(self):
    return len(self.index)

  def __repr__(self):  # grain checks it when restoring an iterator: stable across runs
    return (f"SliceSource(axis={self.axis}, cases={[c.name for c in self.cases]}, "
            f"channels={channel_names(self.data)}, residual={bool(self.data.get('residual'))})")

  def __getitem__(self, record):
    i, k = self.index[record]
    array = np.take(self.cases[i].array, k, axis=self.axis)
    out = example(self.data, np.asarray(array), np.take(self.position, k, axis=self.axis))
    context = int(self.data.get("context", 0))
    if context:  # the raw conditions (channels 1..) of the neighbouring slices
      moved = np.moveaxis(self.cases[i].array, self.axis, 0)
      conditions = range(1, 1 + len(self.data.conditions))
      extra = slice_context.at_slice(moved, k, context, conditions,
                                     list(context_fills(self.data).values()))
      out["cond"] = np.concatenate([out["cond"], extra], axis=-1)
    return out


class CropSource(grain.sources.RandomAccessDataSource):
  """The prepared cases, whole (`RandomCrop` cuts them)."""

  def __init__(self, cases, data):
    self.cases, self.data = cases, data

  def __len__(self):
    return len(self.cases)

  def __repr__(self):  # grain checks it when restoring an iterator: stable across runs
    return (f"CropSource(cases={[c.name for c in self.cases]}, "
            f"channels={channel_names(self.data)}, residual={bool(self.data.get('residual'))})")

  def __getitem__(self, record):
    return {"case": record}


class RandomCrop(grain.transforms.RandomMap):
  """A uniformly placed `crop` of the case (grain seeds `rng` per record: resumable); an
  empty `crop`, (), gives the whole volume. With `align` = f > 1 the crop starts on the
  grid of f-voxel blocks (its size a multiple of f), so its f^3 blocks are the volume's."""

  def __init__(self, source, crop, key="fusion.crop_size", align=1):
    shape = tuple(source.data.volume_shape)
    self.source, self.crop = source, tuple(int(c) for c in crop) or shape
    self.position, self.align = vol.position_embedding(shape), int(align)
    if len(self.crop) != 3 or any(c > n or c < 1 for c, n in zip(self.crop, shape)):
      raise InputError(key, f"{tuple(crop)} does not fit the volumes {shape} (give 3 sizes, "
                       "or () for whole volumes)")
    if any(c % self.align for c in self.crop):
      raise InputError(key, f"{self.crop} must be a multiple of {self.align} along every "
                       "axis (crops on the low-resolution blocks)")

  def random_map(self, element, rng):
    array = self.source.cases[element["case"]].array
    a = self.align
    start = [a * int(rng.integers(0, (n - c) // a + 1)) for n, c in zip(array.shape[:3],
                                                                       self.crop)]
    box = tuple(slice(s, s + c) for s, c in zip(start, self.crop))
    return example(self.source.data, np.asarray(array[box]), self.position[box])


def fixed_examples(source, crop, n, seed):
  """n examples of `source`'s cases, cycling through them, each cut by `RandomCrop(crop)`
  (() = whole) with one generator seeded by `seed`: a 3D task's fixed evaluation batch."""
  rng, cut = np.random.default_rng(seed), RandomCrop(source, crop)
  return [cut.random_map(source[i % len(source)], rng) for i in range(n)]


def train_iterator(source, *, seed, batch_size, operations=(), num_workers=0):
  """An infinite, per-epoch shuffled, resumable grain iterator of this process's batches of
  `source` (`global_batches.train_loader`: the same global batches for any process count)."""
  return global_batches.train_loader(source, seed=seed, batch_size_per_process=batch_size,
                                     operations=operations, num_workers=num_workers)
