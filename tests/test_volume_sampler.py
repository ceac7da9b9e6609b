"""The core volume sampler over 2D slice models, and the one `sampling` config block."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import diffusion
from sciimg_jax.core import sharding
from sciimg_jax.core import trained_models
from sciimg_jax.core.diffusion import sampling_config
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import slice_models
from sciimg_jax.core.diffusion import volume_sampler
from sciimg_jax.core.errors import InputError
from tolerances import float32_tolerance

CHANNELS = ("image", "mask")


def fake_model(axis_name, scale, parameterization="eps"):
  """A slice model whose 'network' returns scale * (x_t + its first channel)."""
  c = diffusion.get_base_config()
  c.data.axis = axis_name
  c.data.conditions = ("mask", "image")  # another order than the chain's: picked by name
  c.diffusion.parameterization = parameterization

  def net(params, inputs, t):
    return scale * (inputs[..., :1] + inputs[..., 1:2])

  return slice_models.from_trained(trained_models.Trained(c, net, params=None), CHANNELS)


def test_stage_overrides_take_the_blocks_values_when_unset():
  s = diffusion.sampling_block(steps=10, eta=0.5)
  s.stage2 = ml_collections.ConfigDict(dict(steps=None, stepper="ddpm", eta=None))
  sampling_config.check(s, stages=("stage2",))
  assert sampling_config.stage(s) == sampling_config.Walk(10, "ddim", 0.5, "uniform", 1.0)
  assert sampling_config.stage(s, "stage2") == sampling_config.Walk(10, "ddpm", 0.5, "uniform",
                                                                    1.0)
  assert sampling_config.stage(diffusion.sampling_block(clip_x0=0.0)).clip is None


@pytest.mark.parametrize("key,value,problem", [
    ("steps", 0, "whole number >= 1"), ("stepper", "euler", "unknown stepper"),
    ("eta", -1.0, ">= 0"), ("spacing", "cubic", "unknown spacing"),
    ("clip_x0", -1.0, "0 = no clipping"), ("num_samples", 0, "whole number >= 1"),
    ("chunk_size", 0, ">= 1"), ("eta_band", (1.0, 0.5), "0 <= lo < hi"),
    ("eta_band", (0.1,), "two noise levels")])
def test_bad_sampling_values_name_their_key(key, value, problem):
  s = diffusion.sampling_block()
  s[key] = value
  with pytest.raises(InputError, match=rf"sampling\.{key}: .*{problem}"):
    sampling_config.check(s)


def test_a_stage_override_is_checked_under_its_own_key():
  s = diffusion.sampling_block()
  s.stage2 = ml_collections.ConfigDict(dict(steps=0))
  with pytest.raises(InputError, match=r"sampling\.stage2\.steps: must be a whole number"):
    sampling_config.check(s, stages=("stage2",))


def test_slice_model_reads_its_channels_by_name_and_converts_x0_to_eps():
  m = fake_model("axial", 0.5, parameterization="x0")
  assert list(m.channels) == [1, 0]
  x = jnp.full((1, 2, 2, 1), 0.3)
  cond = jnp.stack([jnp.full((1, 2, 2), 0.2), jnp.zeros((1, 2, 2))], -1)  # image 0.2, mask 0
  t = jnp.asarray([400])
  raw = m.output(None, x, cond, t)
  # sees the mask first; float32 0.3 (the rest is exact: + 0, x 0.5)
  np.testing.assert_allclose(raw, 0.5 * (0.3 + 0.0), rtol=float32_tolerance(1.0, 1))
  abar = float(schedules.schedule_from_config(m.config.diffusion).alphas_cumprod[400])
  # float32 against float64: x_t = 0.3 in float32, sqrt, a raw, x_t - that, 1 - abar, sqrt, the
  # quotient: 7 roundings on values <= 0.3, the last scaled by 1 / sqrt(1 - abar)
  np.testing.assert_allclose(m.output(None, x, cond, t, to="eps"),
                             (0.3 - np.sqrt(abar) * raw) / np.sqrt(1 - abar), rtol=0,
                             atol=float32_tolerance(0.3 / np.sqrt(1 - abar), 7))
  np.testing.assert_array_equal(m.output(None, x, cond, t, to="x0"), raw)


def test_denoisers_of_every_method_and_a_registered_combinator():
  models = [fake_model("axial", 1.0), fake_model("coronal", 3.0)]
  seen = {}

  def halves(sampler, params, cond, chain, slices):
    parts = sampler.model_denoisers(params, cond, slices)
    seen["called"] = True
    return lambda x, t: 0.5 * parts[0](x, t)

  vs = volume_sampler.VolumeSampler(models, parameterization="eps", chunk_size=4,
                                    combinators={"halves": halves})
  assert vs.methods == ["axial", "coronal", "average", "tpdm", "halves"]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 4, 4)), jnp.float32)
  cond = jnp.asarray(rng.normal(size=(4, 4, 4, 2)), jnp.float32)
  chain = schedules.respace(schedules.make_schedule(), 4)
  t = jnp.asarray(chain.timesteps[1])
  out = {m: np.asarray(vs.denoiser(m, vs.params(), cond, chain)(x, t)) for m in vs.methods}
  # every slice model sees (x_t, mask, image): scale * (x + mask)
  np.testing.assert_allclose(out["axial"], 1.0 * (x + cond[..., 1]), rtol=1e-6)
  np.testing.assert_allclose(out["coronal"], 3.0 * (x + cond[..., 1]), rtol=1e-6)
  np.testing.assert_allclose(out["average"], (out["axial"] + out["coronal"]) / 2, rtol=1e-6)
  np.testing.assert_allclose(out["halves"], out["axial"] / 2, rtol=1e-6)
  assert seen["called"]
  tpdm = vs.denoiser("tpdm", vs.params(), cond, chain)  # step i uses model i mod 2
  np.testing.assert_array_equal(tpdm(x, jnp.asarray(chain.timesteps[2])), out["axial"])
  np.testing.assert_array_equal(tpdm(x, t), out["coronal"])
  with pytest.raises(InputError, match="unknown method 'cubic'; known: axial, coronal, "
                                       "average, tpdm, halves"):
    vs.denoiser("cubic", vs.params(), cond, chain)


def test_restricted_slices_and_samples_in_one_call():
  models = [fake_model("axial", 1.0), fake_model("coronal", 3.0)]
  mesh = sharding.make_mesh()
  vs = volume_sampler.VolumeSampler(models, parameterization="eps", mesh=mesh, chunk_size=8,
                                    num_samples=2)
  mask = np.zeros((8, 8, 8), np.float32)
  mask[2, 3, 5] = 1
  slices = vs.restricted_slices(mask, dilation=1)
  assert set(slices["axial"]) == {4, 5, 6, 8} and set(slices["coronal"]) == {2, 3, 4, 8}
  assert all(v.shape == (8,) for v in slices.values())  # one shape for every mask

  def walk(params, case, key):
    return volume_sampler.initial_noise(key, case.shape) + case

  case = jnp.zeros((4, 4, 4))
  samples = vs.run("noise", walk, vs.params(), case, jax.random.key(3))
  assert samples.shape == (2, 4, 4, 4)
  for i in range(2):  # sample i uses fold_in(key, i)
    np.testing.assert_array_equal(samples[i], volume_sampler.initial_noise(
        jax.random.fold_in(jax.random.key(3), i), (4, 4, 4)))
