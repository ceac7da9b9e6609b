"""The hierarchical inpainting sampler on volumes, with tiny trained models."""

import dataclasses

import jax
import numpy as np
import pytest

from configs.inpainting import inpaint
from data_pipelines import brats_layout
from data_pipelines import sources
from sciimg_jax.core import intensity
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import adaptive_resampling
from sciimg_jax.inpainting import volume_inpainter
from tolerances import float32_tolerance


@pytest.fixture(scope="module")
def models(slice_model_dirs):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  return {name: volume_inpainter.load_slice_model(d, name, mesh) for name, d in slice_model_dirs.items()}


@pytest.fixture(scope="module")
def case(data_cache, slice_model_dirs):
  """A normalised held-out embedded case, padded to the 64^3 volume shape."""
  from configs.inpainting import axial as inpaint_axial
  c = inpaint_axial.get_config("tiny")
  c.data.cache_dir = str(data_cache)
  splits = sources.source_dirs(c.data, data_cache)
  loaded = brats_layout.load_case(brats_layout.find_cases(splits["eval"])[0])
  voided, mask = loaded.volumes["t1n-voided"], loaded.volumes["mask"]
  lo, hi = intensity.percentile_range(voided)
  pad = [(0, 64 - n) for n in voided.shape]
  return (np.pad(intensity.normalize(voided, lo, hi), pad, constant_values=-1.0),
          np.pad(mask, pad))


def make(models, **overrides):
  c = inpaint.get_config("tiny")
  for key, value in overrides.items():
    node = c.sampling if key.split(".")[0] in c.sampling else c.pipeline
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return volume_inpainter.VolumeInpainter(c, models=models)


def test_volume_shape_and_known_region(models, case):
  voided, mask = case
  inpainter = make(models)
  assert inpainter.volume_shape == (64, 64, 64)
  out = inpainter(voided, mask, jax.random.key(0))
  assert out.shape == voided.shape and np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[mask == 0], voided[mask == 0])
  assert np.abs(out[mask > 0] - voided[mask > 0]).mean() > 0.05  # the hole was filled


def test_samples_in_one_call(models, case):
  voided, mask = case
  key = jax.random.key(4)
  one = make(models, method="axial")(voided, mask, key)
  many = make(models, method="axial", num_samples=2)(voided, mask, key)
  assert many.shape == (2,) + voided.shape
  # sample 0 is the one-sample result, up to float32 in other batch shapes: <= 12 network passes
  # (4 steps, 3 with one RePaint loop) of ~20 layers of fan-in <= 288 on O(1) activations
  np.testing.assert_allclose(many[0], one, atol=float32_tolerance(1.0, 12 * 20 * 288))  # 8e-3
  inside = mask > 0
  assert np.abs(many[1][inside] - many[0][inside]).mean() > 1e-3  # the others differ
  for sample in many:
    np.testing.assert_array_equal(sample[~inside], voided[~inside])


def test_slice_restriction_changes_nothing(models, case):
  """TPDM alternates the axial and the coronal model, so this covers both axes' restriction."""
  voided, mask = case
  key = jax.random.key(1)
  restricted = make(models, method="tpdm", slice_restriction=True)(voided, mask, key)
  every = make(models, method="tpdm", slice_restriction=False)(voided, mask, key)
  np.testing.assert_array_equal(restricted, every)


def test_average_baseline_runs(models, case):
  """The average of both models (the coronal model alone runs in hierarchical's stage 2)."""
  voided, mask = case
  out = make(models, method="average", **{"resampling.mode": "fixed"})(voided, mask,
                                                                       jax.random.key(2))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[mask == 0], voided[mask == 0])


def test_refiner_picks_the_denoiser_of_stage_2(models, case):
  """`pipeline.refiner=tpdm`: the coronal refinement alternates both models; stage 1 is the
  same axial walk, so the results share the known region and differ inside the mask (the
  tiny models differ little: their last steps' outputs differ by ~1e-6, far above rounding)."""
  voided, mask = case
  coronal = make(models, **{"resampling.mode": "none"})
  tpdm = make(models, refiner="tpdm", **{"resampling.mode": "none"})
  assert [s.denoiser for s in coronal.stages] == ["axial", "coronal"]
  assert [s.denoiser for s in tpdm.stages] == ["axial", "tpdm"]
  a, b = (inp(voided, mask, jax.random.key(5)) for inp in (coronal, tpdm))
  np.testing.assert_array_equal(a[mask == 0], b[mask == 0])
  assert not np.array_equal(a[mask > 0], b[mask > 0])


def test_empty_mask_returns_the_input(models, case):
  voided, _ = case
  out = make(models, method="axial")(voided, np.zeros_like(voided), jax.random.key(3))
  np.testing.assert_array_equal(out, voided)


def test_adaptive_loops_follow_size_and_disagreement():
  mask = np.zeros((20, 20, 20), np.float32)
  mask[2:4, 2:4, 2:4] = 1        # small hole
  mask[10:18, 10:18, 10:18] = 1  # large hole
  brain = np.ones_like(mask)
  labels, s = adaptive_resampling.mask_regions(mask, brain, context_width=1, size_ratio=4.0)
  assert labels.max() == 2 and 0 < s[1] < s[2] < 1
  from sciimg_jax.core.diffusion import schedules
  sched = schedules.respace(schedules.make_schedule(), 10)
  ref = np.zeros_like(mask)
  fn = adaptive_resampling.adaptive_loops(sched, labels, s, ref, max_loops=8, disagreement_scale=0.1)
  agree = np.asarray(fn(ref, 9))
  assert agree.max() == 0                                  # no disagreement: no loops
  loops = np.asarray(fn(ref + 1.0, 9))
  assert loops[3, 3, 3] < loops[12, 12, 12] <= 8           # bigger hole, more loops
  assert loops[0, 0, 0] == loops[12, 12, 12]               # known voxels follow the busiest
  assert np.asarray(fn(ref + 1.0, 0)).max() < loops.max()  # fewer loops at low noise
  empty_labels, empty_s = adaptive_resampling.mask_regions(np.zeros_like(mask), brain, context_width=1,
                                                size_ratio=4.0)
  none = adaptive_resampling.adaptive_loops(sched, empty_labels, empty_s, None, max_loops=8,
                                 disagreement_scale=0.1)
  assert np.asarray(none(ref, 9)).max() == 0              # no mask: no loops at all


def test_models_with_other_conditions_are_refused(models):
  config = models["coronal"].config.copy_and_resolve_references()
  config.data.conditions = ("t1n-voided", "mask", "t2w")
  other = dataclasses.replace(models["coronal"], config=config)
  with pytest.raises(InputError, match=r"coronal model is conditioned on .*t2w"):
    volume_inpainter.VolumeInpainter(inpaint.get_config("tiny"), models={**models, "coronal": other})


def test_edm_models_with_their_own_sigma_data_are_read_in_x0(models, case):
  """Two edm models whose measured sigma_data differ (each its own slices) share a chain
  read in x0: each converts its output with its own c_skip and c_out."""
  edm = {}
  for name, sd in (("axial", 0.2), ("coronal", 0.3)):
    config = models[name].config.copy_and_resolve_references()
    config.diffusion.parameterization, config.diffusion.sigma_data = "edm", sd
    edm[name] = dataclasses.replace(models[name], config=config)
  inpainter = make(edm)
  assert inpainter.parameterization == "x0"
  m = edm["coronal"]
  x = jax.random.normal(jax.random.key(1), (2,) + m.image_size + (1,))
  cond = jax.numpy.zeros(x.shape[:-1] + (len(volume_inpainter.CHAIN_CHANNELS),))
  t = jax.numpy.asarray([10, 700])
  raw = m.output(m.params, x, m.with_context(cond), t)
  x0 = m.output(m.params, x, m.with_context(cond), t, to="x0")
  abar = np.asarray(volume_inpainter.schedules.schedule_from_config(m.config.diffusion)
                    .alphas_cumprod)[[10, 700]].reshape(2, 1, 1, 1)
  c_skip, c_out = volume_inpainter.schedules.edm_coefficients(abar, 0.3)
  # c_skip x + c_out F: 2 products and a sum on |x| + |F|, float32 against float32
  np.testing.assert_allclose(np.asarray(x0), c_skip * np.asarray(x) + c_out * np.asarray(raw),
                             atol=float32_tolerance(float(np.abs(x).max() + np.abs(raw).max()), 6))
  voided, mask = case
  out = inpainter(voided, mask, jax.random.key(0))
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[mask == 0], voided[mask == 0])
