"""Classical fills: the baselines a user tries before a diffusion model.

  biharmonic  `skimage.restoration.inpaint_biharmonic`: the smooth fill that minimises
              the squared Laplacian, matching the known voxels around the hole;
  harmonic    the Laplace (membrane) fill: every unknown voxel is the mean of its six
              neighbours, solved exactly as one sparse linear system (scipy.sparse);
  biharmonic2d  the biharmonic fill of each axial slice on its own: the in-plane
              context an axial slice model sees, so it tells how much of a 3D fill's
              lead is the through-plane context.

Both work on the normalised volume the inpainting job hands every inpainter, one mask
component at a time inside its bounding box grown by `pipeline.classical_margin`
voxels, so the cost follows the holes, not the volume. They need no training and no
random key, and run through the same job, outputs and scoring as the diffusion methods
(`pipeline.method=biharmonic|harmonic|biharmonic2d`).
"""

from absl import logging
import numpy as np
import scipy.ndimage as ndi
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from skimage.restoration import inpaint_biharmonic

from sciimg_jax.core.errors import InputError


def harmonic_fill(image, mask):
  """`image` with its `mask` voxels replaced by the solution of Laplace's equation.

  The six-neighbour Laplacian is zero at every unknown voxel; known neighbours are the
  boundary values. Voxels on the array's edge have fewer neighbours (a free boundary).
  """
  image = np.asarray(image, np.float64)
  shape, unknown = image.shape, np.flatnonzero(mask)
  n = unknown.size
  if not n:
    return image.copy()
  index = np.full(image.size, -1, np.int64)
  index[unknown] = np.arange(n)
  coords = np.unravel_index(unknown, shape)
  rows, cols, degree, rhs = [], [], np.zeros(n), np.zeros(n)
  for axis in range(image.ndim):
    for step in (-1, 1):
      moved = list(coords)
      moved[axis] = coords[axis] + step
      inside = (moved[axis] >= 0) & (moved[axis] < shape[axis])
      me = np.flatnonzero(inside)
      other = np.ravel_multi_index(tuple(c[inside] for c in moved), shape)
      degree[me] += 1
      j = index[other]
      np.add.at(rhs, me[j < 0], image.ravel()[other[j < 0]])
      rows.append(me[j >= 0])
      cols.append(j[j >= 0])
  rows, cols = np.concatenate(rows), np.concatenate(cols)
  laplacian = sp.csr_matrix((-np.ones(rows.size), (rows, cols)), shape=(n, n)) + sp.diags(degree)
  out = image.copy()
  out.ravel()[unknown] = spla.spsolve(laplacian.tocsc(), rhs)
  return out


def biharmonic_fill(image, mask):
  return inpaint_biharmonic(np.asarray(image, np.float64), np.asarray(mask, bool))


def axial_biharmonic_fill(image, mask):
  """The 2D biharmonic fill of every axial slice (`image[:, :, k]`) that meets the mask."""
  out = np.asarray(image, np.float64).copy()
  for k in np.flatnonzero(np.asarray(mask, bool).any(axis=(0, 1))):
    out[:, :, k] = inpaint_biharmonic(np.ascontiguousarray(out[:, :, k]),
                                      np.ascontiguousarray(mask[:, :, k], bool))
  return out


FILLS = {"biharmonic": biharmonic_fill, "harmonic": harmonic_fill,
         "biharmonic2d": axial_biharmonic_fill}


def fill_components(image, mask, fill, margin):
  """Applies `fill` to each 26-connected mask component inside its bounding box + margin.

  A component that touches the array's border is filled from the sides it has (a
  warning says so); one whose grown box holds no known voxel cannot be filled and
  raises InputError.
  """
  out = np.asarray(image, np.float64).copy()
  labels, _ = ndi.label(mask > 0, structure=np.ones((3,) * image.ndim))
  for k, box in enumerate(ndi.find_objects(labels), start=1):
    grown = tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n))
                  for s, n in zip(box, image.shape))
    region = labels[grown] == k
    touching = [a for a, (s, n) in enumerate(zip(box, image.shape)) if s.start == 0 or s.stop == n]
    if touching:
      logging.warning("mask component %d touches the volume border on axis %s: it is filled "
                      "from its inner sides only", k, ", ".join(map(str, touching)))
    if (labels[grown] > 0).all():
      raise InputError("mask", f"component {k} covers its whole box grown by {margin} voxels "
                       "(no known voxel to fill from); raise pipeline.classical_margin")
    out[grown] = np.where(region, fill(out[grown], region), out[grown])
  return out


class ClassicalInpainter:
  """An inpainter for `inpaint_job.inpaint_cases`: a classical fill, no network."""

  volume_shape = None  # works on any shape: the job neither pads nor crops

  def __init__(self, method, margin=4):
    self.name = f"{method}/none"
    self.fill, self.margin = FILLS[method], margin

  def __call__(self, voided, mask, key=None):
    del key  # deterministic
    filled = fill_components(voided, mask, self.fill, self.margin)
    return np.where(mask > 0, filled, voided).astype(np.float32)
