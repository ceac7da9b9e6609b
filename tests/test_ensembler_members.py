"""Members of an ensemble: own channels, own timesteps, the residual x_t shift, the checks."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs.ensembler import slice_model
from sciimg_jax.core import trained_models
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import members
from tolerances import float32_tolerance, max_abs


def member_config(variant, num_timesteps=1000, schedule="linear"):
  c = slice_model.get_config(variant + "+tiny")
  c.diffusion.num_timesteps = num_timesteps
  c.diffusion.schedule = schedule
  return c


def fake_member(config, ensemble, chain, net):
  return members.make_member(trained_models.Trained(config, net, params=None), ensemble.data,
                             chain.diffusion)


def tells_its_timestep(params, x, t):
  return jnp.broadcast_to(t.astype(jnp.float32)[:, None, None, None], x.shape[:-1] + (1,))


@pytest.mark.parametrize("steps,schedule", [(2000, "linear"), (500, "cosine")])
def test_every_model_is_told_the_timestep_of_its_own_schedule(steps, schedule):
  """The released code's fault: 2D models trained with 2000 steps queried as if 1000."""
  chain = member_config("sr")
  own = member_config("sr", steps, schedule)
  m = fake_member(own, chain, chain, tells_its_timestep)
  # what the sampler passes: the training timesteps of a respaced chain
  t = jnp.asarray(schedules.respace(schedules.schedule_from_config(chain.diffusion), 5).timesteps)
  told = np.asarray(m.output(None, jnp.zeros((5, 4, 4, 1)), jnp.zeros((5, 4, 4, 5)), t,
                             to="eps"))[:, 0, 0, 0]
  chain_abar = np.asarray(schedules.schedule_from_config(chain.diffusion).alphas_cumprod)[t]
  own_abar = np.asarray(schedules.schedule_from_config(own.diffusion).alphas_cumprod)
  brute = [np.argmin(np.abs(own_abar - a)) for a in chain_abar]
  np.testing.assert_array_equal(told, brute)
  told = told.astype(int)
  # not rounding: the nearest of the model's levels is within half a step (beta/2 relative;
  # cosine-500 at t=800: beta = 0.15, where abar = 1.5e-3 and atol carries it)
  np.testing.assert_allclose(own_abar[told], chain_abar, rtol=0.05, atol=1e-4)
  naive = np.asarray(t)  # what the released code told its 2000-step models
  assert np.max(np.abs(own_abar[np.minimum(naive, steps - 1)] - chain_abar)) > 0.05


def test_each_model_gets_its_own_channels_and_residual_shift():
  """A model on (FLAIR_low) in an ensemble on (T1, FLAIR_low) with residual targets."""
  ensemble = member_config("sr")
  ensemble.data.conditions = ("t1n", "t2f:pool4")
  own = member_config("sr")  # residual w.r.t. t2f:pool4
  seen = {}

  def net(params, x, t):
    seen["x"], seen["channels"] = x[..., 0], x.shape[-1]
    return jnp.zeros(x.shape[:-1] + (1,))

  m = fake_member(own, ensemble, ensemble, net)
  rng = np.random.default_rng(0)
  cond = jnp.asarray(rng.normal(size=(2, 4, 4, 6)), jnp.float32)  # t1n, t2f:pool4, pos, mask
  x_t = jnp.asarray(rng.normal(size=(2, 4, 4, 1)), jnp.float32)
  t = jnp.asarray([100, 700], jnp.int32)
  m.output(None, x_t, cond, t, to="eps")
  assert seen["channels"] == 1 + 5 and list(m.channels) == [1, 2, 3, 4, 5]
  abar = np.asarray(schedules.schedule_from_config(ensemble.diffusion).alphas_cumprod)[t]
  expected = x_t[..., 0] + np.sqrt(abar)[:, None, None] * (cond[..., 0] - cond[..., 1]) / 2
  # ~5 float32 elementwise ops on partial sums <= |x_t| + 2|cond|, in the member and here
  np.testing.assert_allclose(seen["x"], expected, rtol=0,
                             atol=float32_tolerance(max_abs(x_t) + 2 * max_abs(cond), 2 * 5))


def test_x0_models_give_epsilon():
  ensemble = member_config("sr")
  own = member_config("sr")
  own.diffusion.parameterization = "x0"
  m = fake_member(own, ensemble, ensemble, lambda p, x, t: jnp.full(x.shape[:-1] + (1,), 0.5))
  x_t, t = jnp.ones((1, 2, 2, 1)), jnp.asarray([300])
  abar = float(schedules.schedule_from_config(own.diffusion).alphas_cumprod[300])
  eps = m.output(None, x_t, jnp.zeros((1, 2, 2, 5)), t, to="eps")
  # float32 against float64: sqrt, 1 - a/2 (>= 1/2: no cancellation), 1 - abar, sqrt, quotient
  np.testing.assert_allclose(eps, (1 - np.sqrt(abar) * 0.5) / np.sqrt(1 - abar),
                             rtol=float32_tolerance(1.0, 5))


@pytest.mark.parametrize("change,message", [
    (lambda c: setattr(c.data, "residual", False), "data.residual=False"),
    (lambda c: setattr(c.data, "conditions", ("t1n",)), r"conditioned on \['t1n'\]"),
    (lambda c: setattr(c.data, "volume_shape", (24, 24, 24)), "positions would differ"),
    (lambda c: setattr(c.train, "objective", "regression"), "not a diffusion model"),
])
def test_a_model_that_cannot_join_is_named(change, message):
  ensemble, own = member_config("sr"), member_config("sr")
  change(own)
  with pytest.raises(InputError, match=message):
    members.check_member(own, ensemble.data, "runs/x")


def test_a_member_with_context_sees_the_neighbours_the_slice_source_gave_it(tmp_path):
  """2.5D members: the context channels the volume sampler gives slice k
  (`SliceModel.with_context`, then the model's channels) are the training example's
  (`volume_cases.SliceSource`)."""
  from data_pipelines import volume_cases
  ensemble = member_config("sr")
  own = member_config("sr")
  own.data.context = 1
  seen = {}

  def net(params, x, t):
    seen["cond"] = np.asarray(x[..., 1:])
    return jnp.zeros(x.shape[:-1] + (1,))

  m = fake_member(own, ensemble, ensemble, net)
  shape = tuple(ensemble.data.volume_shape)
  rng = np.random.default_rng(0)
  array = rng.normal(size=shape + (3,)).astype(np.float32)  # target, t2f:pool4, brain
  array[..., -1] = 1.0
  np.save(tmp_path / "c.npy", array)
  case = volume_cases.PreparedCase("c", tmp_path / "c.npy", {})
  source = volume_cases.SliceSource([case], own.data, own.data.axis)
  cond = np.concatenate([array[..., 1:2], volume_cases.vol.position_embedding(shape),
                         array[..., 2:]], axis=-1)
  expanded = m.with_context(jnp.asarray(cond))
  for k in (0, shape[m.axis] // 2, shape[m.axis] - 1):
    example = source[k]["cond"]
    assert example.shape[-1] == len(volume_cases.slice_channel_names(own.data)) == 7
    here = jnp.take(expanded, k, axis=m.axis)[None]
    m.output(None, jnp.zeros(here.shape[:-1] + (1,)), here, jnp.asarray([10]))
    np.testing.assert_array_equal(seen["cond"][0], example)
