"""Classical fills: exact on functions they must reproduce, equal to the peer library, in the job."""

import numpy as np
import pytest
from skimage.restoration import inpaint_biharmonic

from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import classical


def _linear_with_holes():
  x, y, z = np.meshgrid(*[np.arange(14.0)] * 3, indexing="ij")
  f = 0.3 * x - 0.2 * y + 0.1 * z + 1.0
  mask = np.zeros(f.shape, bool)
  mask[3:8, 4:9, 2:7] = True     # a box
  mask[10:12, 1:3, 9:12] = True  # and a second, separate hole
  return f, mask


def test_harmonic_fill_is_exact_on_linear_functions():
  f, mask = _linear_with_holes()
  filled = classical.fill_components(np.where(mask, 0.0, f), mask, classical.harmonic_fill, 1)
  np.testing.assert_allclose(filled, f, atol=1e-12)


def test_harmonic_fill_is_the_mean_of_its_neighbours():
  rng = np.random.default_rng(0)
  image, mask = rng.normal(size=(9, 8, 7)), np.zeros((9, 8, 7), bool)
  mask[2:6, 3:6, 1:5] = True
  out = classical.harmonic_fill(image, mask)
  np.testing.assert_array_equal(out[~mask], image[~mask])
  padded = np.pad(out, 1, mode="edge")  # not used at the holes: they are inside
  mean = sum(np.roll(padded, s, a) for a in range(3) for s in (-1, 1))[1:-1, 1:-1, 1:-1] / 6
  np.testing.assert_allclose(out[mask], mean[mask], atol=1e-10)


def test_biharmonic_per_component_equals_skimage_on_the_whole_volume():
  f, mask = _linear_with_holes()
  f = f + np.sin(f)  # not linear, so the fill is not trivial
  whole = inpaint_biharmonic(np.where(mask, 0.0, f), mask)
  per_box = classical.fill_components(np.where(mask, 0.0, f), mask, classical.biharmonic_fill,
                                      margin=100)  # boxes grown to the whole volume
  np.testing.assert_allclose(per_box, whole, atol=1e-10)
  bounded = classical.fill_components(np.where(mask, 0.0, f), mask, classical.biharmonic_fill, 4)
  assert np.abs(bounded - f)[mask].mean() < np.abs(f[mask] - f[~mask].mean()).mean() / 5


def test_axial_biharmonic_fills_each_axial_slice_as_skimage_does():
  f, mask = _linear_with_holes()
  f = f + np.sin(f)
  out = classical.axial_biharmonic_fill(np.where(mask, 0.0, f), mask)
  for k in range(f.shape[2]):
    voided_k, mask_k = np.where(mask, 0.0, f)[:, :, k].copy(), mask[:, :, k].copy()
    expected = (inpaint_biharmonic(voided_k, mask_k)
                if mask[:, :, k].any() else f[:, :, k])
    np.testing.assert_allclose(out[:, :, k], expected, atol=1e-10)


@pytest.mark.parametrize("method", ["biharmonic", "harmonic", "biharmonic2d"])
def test_classical_inpainter_keeps_the_known_region(method):
  f, mask = _linear_with_holes()
  voided = np.where(mask, -1.0, f / 10).astype(np.float32)
  out = classical.ClassicalInpainter(method)(voided, mask.astype(np.float32))
  assert out.dtype == np.float32 and out.shape == voided.shape
  np.testing.assert_array_equal(out[~mask], voided[~mask])
  # not rounding (float64 inside): the fills' own error on a ramp (biharmonic ~2e-3, harmonic
  # exact), far below the distance to the -1 the hole held
  np.testing.assert_allclose(out[mask], (f / 10)[mask], atol=0.05)


@pytest.mark.parametrize("method", ["biharmonic", "harmonic", "biharmonic2d"])
def test_mask_on_the_border_and_a_mask_with_nothing_known(method, caplog):
  f, _ = _linear_with_holes()
  mask = np.zeros(f.shape, bool)
  mask[0:3, 5:9, 5:9] = True  # touches the x = 0 face
  out = classical.ClassicalInpainter(method)(np.where(mask, -1.0, f).astype(np.float32),
                                             mask.astype(np.float32))
  assert np.all(np.isfinite(out)) and "touches the volume border on axis 0" in caplog.text
  # not rounding: filled from its inner sides only, the ramp (range ~8) is extrapolated to the
  # face: off by up to ~0.3 (harmonic)
  np.testing.assert_allclose(out[mask], f[mask], atol=0.6)
  with pytest.raises(InputError, match="no known voxel to fill from"):
    classical.ClassicalInpainter(method)(f.astype(np.float32), np.ones(f.shape, np.float32))
