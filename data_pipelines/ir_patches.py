"""Patches of IR/RGB tissue regions: class-balanced sampling and a spatial train/test split.

A patch is the (p, p) window around a centre pixel and takes the centre pixel's class.
`spatial_split` marks square blocks of a region as test; `patch_centres` only takes
centres whose whole window lies on the requested side of the split (and inside the image,
with a labelled centre), so no pixel of a test block is ever inside a training patch.
Class balance: up to `per_class` centres of each class, drawn without replacement from a
generator seeded by the caller (for instance from the region's name, never its position
in a listing).
"""

import numpy as np

from sciimg_jax.core.errors import InputError


def spatial_split(shape, *, block, test_fraction, seed):
  """(H, W) bool: True on the test blocks (a `test_fraction` of `block` x `block` tiles)."""
  if not 0.0 <= test_fraction < 1.0:
    raise InputError("data.test_fraction", f"must be in [0, 1), got {test_fraction!r}")
  rows, cols = -(-shape[0] // block), -(-shape[1] // block)
  rng = np.random.default_rng(seed)
  tiles = np.zeros(rows * cols, bool)
  tiles[rng.permutation(rows * cols)[:int(round(test_fraction * rows * cols))]] = True
  grid = tiles.reshape(rows, cols).repeat(block, 0).repeat(block, 1)
  return grid[:shape[0], :shape[1]]


def patch_centres(labels, patch_size, *, num_classes, per_class, rng, allowed=None):
  """(N, 2) int centres and (N,) labels: up to `per_class` of each class.

  `allowed` (H, W) bool: pixels a window may cover (None: all). Windows that leave the
  image, or centres labelled < 0 (ignored pixels), are never taken.
  """
  labels = np.asarray(labels)
  h, w = labels.shape
  r = patch_size // 2
  ok = np.zeros((h, w), bool)
  # Centre y covers rows y - r .. y - r + p - 1; count the forbidden pixels of every window
  # with an integral image.
  forbidden = np.zeros((h, w), bool) if allowed is None else ~np.asarray(allowed, bool)
  s = np.pad(np.cumsum(np.cumsum(forbidden, 0), 1), ((1, 0), (1, 0)))
  p = patch_size
  if h >= p and w >= p:
    count = s[p:, p:] - s[:-p, p:] - s[p:, :-p] + s[:-p, :-p]  # (h - p + 1, w - p + 1)
    ok[r:r + h - p + 1, r:r + w - p + 1] = count == 0
  ok &= labels >= 0
  centres, classes = [], []
  for k in range(num_classes):
    idx = np.flatnonzero(ok & (labels == k))
    pick = rng.choice(idx, min(len(idx), per_class), replace=False) if len(idx) else idx
    centres.append(np.stack(np.unravel_index(np.sort(pick), (h, w)), -1))
    classes.append(np.full(len(pick), k, np.int32))
  return np.concatenate(centres).astype(np.int32), np.concatenate(classes)


def cut(image, centres, patch_size):
  """(N, p, p, C) windows of `image` (H, W, C) at `centres` (as `patch_centres` takes them)."""
  r = patch_size // 2
  return np.stack([image[y - r:y - r + patch_size, x - r:x - r + patch_size]
                   for y, x in centres]) if len(centres) else np.zeros(
                       (0, patch_size, patch_size, image.shape[-1]), image.dtype)
