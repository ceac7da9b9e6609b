"""Inpainting training examples cut from whole volumes: 3D holes, context, a classical prior.

`data.source = 'volumes'` trains the slice models on slices of whole prepared volumes
instead of the TFDS slice dataset, which is what these options need:

  data.context = k    the voided image and the mask of the k slices on each side
                      (`core.slice_context`): a 2.5D model;
  data.prior          'biharmonic' or 'harmonic' (`classical.FILLS`): the classical fill of
                      the voided volume, one more condition channel named 'prior';
  data.prior_dropout  the probability that a training example's prior channel shows the
                      voided image instead (no prior; the target unchanged): the model must
                      also generate without the fill (classifier-free style; 0 = off);
  data.residual       the model learns (target - prior) / s, so an untrained model (its
                      output layer starts at zero) with the x0 parameterisation returns the
                      classical fill exactly; s is `data.residual_scale` (2: the residual
                      lies in [-1, 1]; smaller s puts its fine detail above more of the
                      chain's noise levels, `chain_clip` widens the x0 clip to match).

What these channels and the residual mean (their names, the prior's fill, the residual
space) is `chain_space`'s, which inference reads too.

Each case is prepared once,

    <cache_dir>/inpainting-volumes-<fingerprint>/<split>/<case>.npy   (X, Y, Z, 5) float32
                                                      .json  normalisation range

with the channels target t1n, voided t1n, mask, the prior (the fill inside the mask, the
voided image elsewhere; the voided image without `data.prior`) and the voxels left out
of the loss (`data.loss_exclude`, e.g. 'mask-unhealthy': the tumour, whose t1n is not the
healthy tissue a pseudo-healthy model must learn; zero for a case without that file):
images normalised with the voided volume's 0.5/99.5 percentiles, as the inpainting job
normalises. Every example carries 'scored' (H, W, 1): 0 on the left-out voxels.

A record is one slice along `data.axis` (every brain slice, or with `data.slices = 'mask'`
those that meet the mask). `RandomHoles` gives it, with probability
`data.random_masks.probability`, a fresh random 3D lesion-shaped hole
(`input_pipeline.lesion_mask_3d`; with `data.random_masks.families` one of several
`mask_families` shapes, drawn per hole) through the slice, inside the brain and outside the
case's own mask: voided to -1 and added to the mask on every slice it crosses, so the
context slices hold the same hole a real lesion leaves (a model cannot copy the answer
from a neighbour). The prior inside the hole is the fill of the hole with the case's own
prior as its surroundings, on the hole's box grown by `data.prior_margin` voxels. grain
seeds the hole per record and epoch: fresh holes every epoch, and resumed runs draw the same.
Slices are centre padded/cropped to `data.image_size`.
"""

import pathlib

import grain
import numpy as np

from data_pipelines import brats_layout
from data_pipelines import mask_families
from data_pipelines import volume_cases
from sciimg_jax.core import intensity
from sciimg_jax.core import slice_context
from sciimg_jax.core import volumes as vol
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import chain_space
from sciimg_jax.inpainting import classical

_FORMAT_VERSION = 2
KEYS = ("t1n", "t1n-voided", "mask")
TARGET, VOIDED, MASK, PRIOR, UNSCORED = range(5)
FILLS = (-1.0, -1.0, 0.0, -1.0)        # background of each prepared image channel
CONDITION_CHANNELS = {"t1n-voided": VOIDED, "mask": MASK}


def prepare_case(case_dir, data):
  """(array (X, Y, Z, 4), metadata) of one case folder (see the module docstring)."""
  exclude = data.get("loss_exclude", "")
  case = brats_layout.load_case(case_dir, keys=KEYS, optional=(exclude,) if exclude else ())
  voided_path = brats_layout.case_file(case_dir, "t1n-voided")
  lo, hi = intensity.percentile_range(case.volumes["t1n-voided"], where=voided_path)
  mask = (case.volumes["mask"] > 0).astype(np.float32)
  voided = intensity.normalize(case.volumes["t1n-voided"], lo, hi)
  target = intensity.normalize(case.volumes["t1n"], lo, hi)
  prior = chain_space.prior_volume(voided, mask, data,
                                   where=brats_layout.case_file(case_dir, "mask"))
  unscored = (case.volumes[exclude] > 0) if exclude in case.volumes else np.zeros_like(mask)
  array = np.stack([target, voided, mask, prior, unscored], axis=-1).astype(np.float32)
  return array, {"case": case.name, "lo": float(lo), "hi": float(hi)}


def prepare(root, data, cache_dir, split):
  """The prepared cases of a BraTS-layout folder (written once into `cache_dir`, atomically)."""
  cases, incomplete = brats_layout.scan_cases(root, KEYS)
  if incomplete:
    name, reason = next(iter(incomplete.items()))
    raise InputError(pathlib.Path(root) / name, f"{reason} (needed: {', '.join(KEYS)}); "
                     f"{len(incomplete)} incomplete case folder(s) in {root}")
  if not cases:
    brats_layout.find_cases(root, KEYS)  # raises: no case folders
  settings = {"v": _FORMAT_VERSION, "prior": data.get("prior", ""),
              "margin": int(data.get("prior_margin", 0)), "exclude": data.get("loss_exclude", "")}
  keys = KEYS + ((data.loss_exclude,) if data.get("loss_exclude") else ())
  fingerprint = volume_cases.fingerprint(root, cases, keys, settings)
  out = pathlib.Path(cache_dir) / f"inpainting-volumes-{fingerprint}" / split
  return volume_cases.cached_cases(cases, out, lambda case_dir: prepare_case(case_dir, data))


class SlabSource(grain.sources.RandomAccessDataSource):
  """Every selected slice along `data.axis` of the prepared cases (`example` builds it)."""

  def __init__(self, cases, data):
    self.cases, self.data = cases, data
    self.axis = vol.AXES[data.axis]
    self.context = int(data.get("context", 0))
    self.names = chain_space.channel_names(data)
    other = tuple(a for a in range(3) if a != self.axis)
    self.index = []
    for i, c in enumerate(cases):
      slice_context.check(self.context, c.array.shape[self.axis],
                          where=f"data.context ({c.name})")
      a = np.asarray(c.array)
      keep = (a[..., MASK] > 0) if data.slices == "mask" else (
          (a[..., VOIDED] > -1.0) | (a[..., MASK] > 0))
      self.index += [(i, int(k)) for k in np.flatnonzero(keep.any(axis=other))]
    if not self.index:
      raise InputError("data", f"no case has a slice of the selection {data.slices!r}")

  def __len__(self):
    return len(self.index)

  def __repr__(self):  # grain checks it when restoring an iterator: stable across runs
    return (f"SlabSource(axis={self.axis}, cases={[c.name for c in self.cases]}, "
            f"channels={self.names}, residual={bool(self.data.get('residual'))})")

  def __getitem__(self, record):
    return {"record": np.int64(record)}

  def with_mask(self):
    """The records whose slice meets the case's own mask."""
    return [r for r, (i, k) in enumerate(self.index)
            if np.take(self.cases[i].array[..., MASK], k, axis=self.axis).any()]

  def hole(self, array, k, rng):
    """Adds a random 3D hole through slice k to `array` (a copy of a case), in place."""
    r = self.data.random_masks
    moved = np.moveaxis(array, self.axis, 0)  # a view: writes go to `array`
    brain = (moved[k, ..., TARGET] > -1.0) & (moved[k, ..., MASK] == 0)
    candidates = np.argwhere(brain)
    if not len(candidates):
      return
    radii = tuple(f * min(self.data.image_size) for f in r.radius_fraction)
    centre = np.insert(candidates[rng.integers(len(candidates))], 0, k)
    half = int(np.ceil(2.5 * radii[1])) + 1
    lo = np.maximum(centre - half, 0)
    box = tuple(slice(a, min(a + 2 * half + 1, n)) for a, n in zip(lo, moved.shape[:3]))
    region = (moved[box + (TARGET,)] > -1.0) & (moved[box + (MASK,)] == 0)
    families = mask_families.of(r)
    # one family draws nothing: the random stream (and the holes) of earlier runs stay
    family = families[rng.integers(len(families))] if len(families) > 1 else families[0]
    hole = np.zeros(moved.shape[:3], bool)
    hole[box] = mask_families.FAMILIES[family](region.shape, region, centre - lo, rng,
                                               radius_range=radii, max_blobs=r.max_blobs)
    if not hole.any():
      return
    if self.data.get("prior"):
      m = int(self.data.prior_margin)
      grown = tuple(slice(max(a.min() - m, 0), min(a.max() + 1 + m, n))
                    for a, n in zip(np.nonzero(hole), moved.shape[:3]))
      filled = classical.FILLS[self.data.prior](moved[grown + (PRIOR,)], hole[grown])
      moved[grown + (PRIOR,)] = np.where(hole[grown], filled, moved[grown + (PRIOR,)])
    else:
      moved[..., PRIOR][hole] = -1.0
    moved[..., VOIDED][hole] = -1.0
    moved[..., MASK][hole] = 1.0

  def example(self, record, rng=None):
    """{'target' (H, W, 1), 'cond' (H, W, C)} of `record`, with a random hole if `rng`."""
    i, k = self.index[int(record)]
    array = self.cases[i].array
    r = self.data.random_masks
    if rng is not None and r.probability and rng.uniform() < r.probability:
      array = np.array(array)
      self.hole(array, k, rng)
    moved = np.moveaxis(array, self.axis, 0)
    here = moved[k]
    own = [CONDITION_CHANNELS[c] for c in self.data.conditions]
    parts = [here[..., own]]
    fills = [FILLS[c] for c in own]
    if self.data.get("prior"):
      parts.append(here[..., PRIOR:PRIOR + 1])
      fills.append(FILLS[PRIOR])
    if self.context:
      parts.append(slice_context.at_slice(moved, k, self.context, [VOIDED, MASK],
                                          list(chain_space.CONTEXT_FILLS.values())))
      fills += list(chain_space.CONTEXT_FILLS.values()) * (2 * self.context)
    size = tuple(self.data.image_size)
    cond = vol.center_pad_crop(np.concatenate(parts, -1), size, np.asarray(fills, np.float32))
    target = vol.center_pad_crop(here[..., TARGET:TARGET + 1], size, -1.0)
    if self.data.get("residual"):
      p = len(own)  # the prior channel
      target = chain_space.to_residual(target, cond[..., p:p + 1],
                                       chain_space.residual_scale(self.data))
    dropout = float(self.data.get("prior_dropout", 0.0))
    if rng is not None and dropout and rng.uniform() < dropout:
      # classifier-free style: the prior channel shows what it shows without a prior (the
      # voided image, -1 in the hole); the target stays the same, so the model must
      # generate the hole's tissue from the context alone
      v = own.index(VOIDED)
      cond[..., len(own)] = cond[..., v]
    scored = 1.0 - vol.center_pad_crop(here[..., UNSCORED:UNSCORED + 1], size, 0.0)
    return {"target": target.astype(np.float32), "cond": cond.astype(np.float32),
            "scored": scored.astype(np.float32)}


class RandomHoles(grain.transforms.RandomMap):
  """The record's example with a random 3D hole (grain seeds `rng` per record and epoch)."""

  def __init__(self, source):
    self.source = source

  def random_map(self, element, rng):
    return self.source.example(element["record"], rng)


def sources(data, splits, cache_dir):
  """{split: SlabSource} of the BraTS-layout folders `splits` ({name: folder})."""
  return {name: SlabSource(prepare(root, data, cache_dir, name), data)
          for name, root in splits.items()}


def train_iterator(data, source, *, seed, batch_size):
  return volume_cases.train_iterator(source, seed=seed, batch_size=batch_size,
                                     operations=[RandomHoles(source)],
                                     num_workers=data.num_workers)


def batch(source, records):
  """The examples of `records`, without random holes, stacked."""
  items = [source.example(r) for r in records]
  return {k: np.stack([e[k] for e in items]) for k in items[0]}
