"""Tests for sciimg_jax.core.diffusion: schedules, steppers and the sampler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import steppers
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.core.errors import InputError
from tolerances import float32_tolerance, max_abs

# Inputs shared by the MONAI reference checks: shape (1, 1, 2, 3).
X_T = np.array([0.3, -1.2, 0.8, 0.05, -0.6, 1.5], np.float32).reshape(1, 1, 2, 3)
MODEL_OUT = np.array([0.1, 0.7, -0.4, 1.1, -0.9, 0.2], np.float32).reshape(1, 1, 2, 3)

# Reference values computed once with MONAI 1.6.1 (torch 2.13, CPU, float32) via
# monai.networks.schedulers, clip_sample=False, num_train_timesteps=1000, inputs
# sample=X_T and model_output=MODEL_OUT above:
#  * schedules: DDPMScheduler(1000, schedule=S).alphas_cumprod[[0, 499, 999]]
#    for S = "linear_beta" (beta 1e-4..0.02) and "cosine".
#  * DDPM: DDPMScheduler(1000, schedule=S, variance_type="fixed_small",
#    prediction_type=P).step(MODEL_OUT, t, X_T, generator=torch.Generator()
#    .manual_seed(0)). For t > 0 the step adds std * z with
#    z = torch.randn((1, 1, 2, 3), generator=torch.Generator().manual_seed(0))
#    and std = _get_variance(t) ** 0.5; we record std and mean = output - std * z,
#    so the comparison does not depend on torch's random numbers.
#  * DDIM: DDIMScheduler(1000, prediction_type=P) (set_alpha_to_one=True,
#    steps_offset=0), .set_timesteps(50), then .step(MODEL_OUT, t, X_T, eta)
#    which goes from t to t - 1000 // 50. For eta > 0, std = eta *
#    _get_variance(t, t - 20) ** 0.5 and mean = output - std * z as above.
MONAI_ABAR_LINEAR = [9.998999834060669e-01, 7.858723402023315e-02, 4.035830352222547e-05]
MONAI_ABAR_COSINE = [9.9995875358581543e-01, 4.9384382367134094e-01, 2.4288902000790813e-09]
# DDPM, linear, epsilon, t=500.
MONAI_DDPM_EPS_T500_STD = 0.10025634616613388
MONAI_DDPM_EPS_T500_MEAN = [0.3004675805568695, -1.2134521007537842, 0.8082660436630249,
                            0.038671739399433136, -0.593565046787262, 1.5054965019226074]
# DDPM, linear, v_prediction, t=0 (no noise added).
MONAI_DDPM_V_T0 = [0.29893532395362854, -1.206740379333496, 0.8038269281387329,
                   0.038990117609500885, -0.590871274471283, 1.4976762533187866]
# DDPM, cosine, sample (x0), t=700.
MONAI_DDPM_X0_COSINE_T700_STD = 0.078465536236763
MONAI_DDPM_X0_COSINE_T700_MEAN = [0.29895246028900146, -1.1919795274734497, 0.7948850989341736,
                                  0.05359769985079765, -0.6003423929214478, 1.4937175512313843]
# DDIM, linear, epsilon, t=500 -> 480, eta=0.
MONAI_DDIM_EPS_T500 = [0.32037776708602905, -1.4014952182769775, 0.9270581007003784,
                       -0.06476998329162598, -0.5644021034240723, 1.6346116065979004]
# DDIM, linear, epsilon, t=500 -> 480, eta=0.5.
MONAI_DDIM_EPS_ETA05_T500_STD = 0.21013276278972626
MONAI_DDIM_EPS_ETA05_T500_MEAN = [0.31802812218666077, -1.4179425239562988, 0.9364566206932068,
                                  -0.09061574935913086, -0.5432554483413696, 1.6299123764038086]
# DDIM, linear, v_prediction, t=20 -> 0, eta=0.
MONAI_DDIM_V_T20 = [0.292363703250885, -1.245548963546753, 0.8257541060447693,
                    -0.02621377632021904, -0.5363039970397949, 1.4825713634490967]

KEY = jax.random.key(0)


# atol: a step is ~16 float32 ops on terms of magnitude <= 2 (X_T, MODEL_OUT, z), ours and MONAI's
def _close(actual, expected, rtol=0, atol=float32_tolerance(2.0, 2 * 16)):
  np.testing.assert_allclose(np.ravel(actual), np.ravel(expected), rtol=rtol, atol=atol)


def _monai_atol(t):
  """`_close`'s atol for a MONAI step at timestep t: also MONAI's float32 abar_t, a cumprod of
  t + 1 factors 1 - beta_k (beta_k's float32 error, 1 - beta_k and the product: 3 roundings
  each, see test_schedule_matches_monai), which the step multiplies into terms <= 2."""
  return float32_tolerance(2.0, 2 * 16 + 3 * (t + 1))


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_is_monotone(name):
  s = schedules.make_schedule(name, 1000)
  betas, abar = np.asarray(s.betas), np.asarray(s.alphas_cumprod)
  assert betas.shape == abar.shape == (1000,)
  assert np.all(betas > 0) and np.all(betas < 1)
  assert np.all(np.diff(abar) < 0)
  np.testing.assert_array_equal(np.asarray(s.timesteps), np.arange(1000))
  assert s.num_train_timesteps == 1000


@pytest.mark.parametrize("name,expected", [("linear", MONAI_ABAR_LINEAR),
                                           ("cosine", MONAI_ABAR_COSINE)])
def test_schedule_matches_monai(name, expected):
  # We compute in float64 and round once; MONAI's float32 cumprod drifts (5e-5 relative at
  # t=999 of the cosine schedule; MONAI run in float64 gives 2.42876691e-09, our value). Up to
  # t it multiplies t + 1 factors 1 - beta_k: beta_k's float32 error (linspace, or 1 - a ratio
  # of cos^2 for cosine: ~1 eps of 1 - beta_k, but beta_k / (1 - beta_k) eps/2 where beta_k
  # is clipped at 0.999), then 1 - beta_k and the product round: 3 + beta_k / (1 - beta_k).
  s = schedules.make_schedule(name, 1000)
  betas = np.asarray(s.betas, np.float64)
  ops = 1 + np.cumsum(3 + betas / (1 - betas))
  for t, want in zip([0, 499, 999], expected):
    _close(s.alphas_cumprod[t], want, rtol=float32_tolerance(1.0, ops[t]), atol=0)


@pytest.mark.parametrize("spacing", ["uniform", "linspace", "karras"])
def test_respace_keeps_alphas_cumprod(spacing):
  full = schedules.make_schedule("cosine", 1000)
  s = schedules.respace(full, 50, spacing)
  t = np.asarray(s.timesteps)
  assert t.shape == (50,) and t.dtype == np.int32 and np.all(np.diff(t) > 0)
  if spacing == "uniform":
    np.testing.assert_array_equal(t, np.arange(0, 1000, 20))
  else:
    assert t[0] == 0 and t[-1] == 999
  np.testing.assert_array_equal(np.asarray(s.alphas_cumprod),
                                np.asarray(full.alphas_cumprod)[t])
  # The new betas reproduce the kept abar as a cumulative product. They are float64 values
  # rounded once to float32, which moves 1 - beta_k by beta_k / (1 - beta_k) eps/2 relative;
  # the float64 product of the exact factors telescopes to the stored abar.
  betas = np.asarray(s.betas, np.float64)
  ops = 1 + np.cumsum(betas / (1 - betas))
  product, abar = np.cumprod(1.0 - betas), np.asarray(s.alphas_cumprod, np.float64)
  for k in range(len(betas)):
    assert abs(product[k] - abar[k]) <= float32_tolerance(abar[k], ops[k]), k
  assert s.num_train_timesteps == 1000
  if spacing == "karras":  # its levels depend on the chain's range: no composition law
    return
  # Respacing twice maps back to the original timesteps.
  twice = schedules.respace(s, 10, spacing)
  np.testing.assert_array_equal(np.asarray(twice.timesteps),
                                t[np.asarray(schedules.respace(
                                    schedules.make_schedule("cosine", 50), 10, spacing).timesteps)])


@pytest.mark.parametrize("num_steps", [2, 10, 25, 200, 1000])
def test_karras_spacing_follows_the_rho_law(num_steps):
  """Distinct increasing indices from 0 to K-1 whose noise levels follow Karras et al.'s
  sigma_j^(1/7) = lerp(sigma_min^(1/7), sigma_max^(1/7), j / (n - 1)) up to the index grid."""
  full = schedules.make_schedule("linear", 1000)
  t = schedules.karras_indices(full.alphas_cumprod, num_steps)
  assert t.shape == (num_steps,) and t[0] == 0 and t[-1] == 999 and np.all(np.diff(t) > 0)
  abar = np.asarray(full.alphas_cumprod, np.float64)
  log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))
  lo, hi = np.exp(log_sigma[0] / 7), np.exp(log_sigma[-1] / 7)
  wanted = 7 * np.log(lo + np.linspace(0, 1, num_steps) * (hi - lo))
  # where the wanted levels are farther apart than the grid's steps, each index is the
  # nearest one: within half the largest log-sigma step of the grid around it
  grid_step = np.abs(np.diff(log_sigma)).max()
  spread_out = np.concatenate([[True], np.diff(wanted) > 2 * grid_step])
  assert np.all(np.abs(log_sigma[t] - wanted)[spread_out] <= grid_step), (t, wanted)
  if num_steps == 25:  # most steps where the noise is small: half below t = 400
    assert (t < 400).sum() >= 10


@pytest.mark.parametrize("sigma_data", [0.1, 0.5])
def test_lognormal_noise_levels_follow_edm_training_distribution(sigma_data):
  """t of `training_timesteps(..., 'lognormal')` has log sigma ~ N(log sigma_data - 0.5, 1.2^2)
  up to the index grid; 'uniform' is U{0..K-1}; another name is refused."""
  s = schedules.make_schedule("linear", 1000, sigma_data=sigma_data)
  n = 200_000
  t = np.asarray(schedules.training_timesteps(s, KEY, n, "lognormal"))
  assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= 999
  abar = np.asarray(s.alphas_cumprod, np.float64)
  log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))
  mean = np.log(sigma_data) + schedules.LOGNORMAL_OFFSET
  # quantiles inside the grid's range: the nearest index moves log sigma by at most half a
  # step of the grid there (<= 0.5 at the low end), and 2e5 draws place a quantile within
  # 0.02 of its value (not rounding: binomial error of the empirical quantile)
  for q, z in ((0.25, -0.6745), (0.5, 0.0), (0.75, 0.6745)):
    wanted = mean + schedules.LOGNORMAL_STD * z
    got = np.quantile(log_sigma[t], q)
    step = np.abs(np.diff(log_sigma))[max(np.searchsorted(log_sigma, wanted) - 1, 0)]
    assert abs(got - wanted) <= step / 2 + 0.02, (q, got, wanted)
  u = np.asarray(schedules.training_timesteps(s, KEY, n, "uniform"))
  # a uniform draw: mean (K - 1) / 2 within 5 standard errors (288.7 / sqrt(n))
  assert abs(u.mean() - 499.5) < 5 * 288.7 / np.sqrt(n)
  with pytest.raises(InputError, match="diffusion.noise_levels"):
    schedules.training_timesteps(s, KEY, 4, "loguniform")


def test_q_sample_mean_and_variance():
  s = schedules.make_schedule("linear", 1000)
  t = jnp.array([10, 300, 900], jnp.int32)
  x0 = jnp.array([0.7, -0.4, 1.0])[:, None] * jnp.ones((3, 100_000))
  noise = jax.random.normal(KEY, x0.shape)
  x_t = jax.jit(schedules.q_sample)(s, x0, t, noise)
  abar = np.asarray(s.alphas_cumprod)[np.asarray(t)]
  n = x0.shape[1]
  # Standard errors with N = 1e5 draws: of the mean, sqrt(var / N); of the
  # variance (Gaussian), var * sqrt(2 / N). A 5-sigma band fails by chance with
  # probability < 1e-6 and the key is fixed, while a wrong coefficient (e.g.
  # sqrt(1 - abar) -> 1 - abar) moves these statistics by many bands.
  var = 1.0 - abar
  np.testing.assert_array_less(
      np.abs(np.mean(x_t, axis=1) - np.sqrt(abar) * np.asarray(x0[:, 0])),
      5 * np.sqrt(var / n))
  np.testing.assert_array_less(np.abs(np.var(x_t, axis=1) - var), 5 * var * np.sqrt(2 / n))


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "edm"])
def test_target_and_prediction_round_trip(parameterization):
  s = schedules.make_schedule("cosine", 1000)
  k1, k2 = jax.random.split(KEY)
  x0 = jax.random.normal(k1, (4, 5, 5, 1))
  noise = jax.random.normal(k2, x0.shape)
  t = jnp.array([0, 100, 500, 900], jnp.int32)
  x_t = schedules.q_sample(s, x0, t, noise)
  target = schedules.training_target(s, parameterization, x0, noise, t)
  pred_x0, pred_eps = schedules.predict_x0_eps(s, parameterization, x_t, t, target)
  # q_sample 3 roundings, the target <= 6 (edm), the prediction <= 6, on terms <= |x0| + |noise|;
  # the prediction divides by a = sqrt(abar) (x0; smallest at t=900) or s = sqrt(1 - abar)
  # (eps; smallest at t=0), which scales the error by 1/a or 1/s.
  abar = np.asarray(s.alphas_cumprod)[np.asarray(t)]
  magnitude = max_abs(x0) + max_abs(noise)
  _close(pred_x0, x0, atol=float32_tolerance(magnitude / np.sqrt(abar).min(), 3 + 6 + 6))
  _close(pred_eps, noise, atol=float32_tolerance(magnitude / np.sqrt(1 - abar).min(), 3 + 6 + 6))
  assert float(schedules.diffusion_loss(s, parameterization, target, x0, noise, t)) < 1e-12


def test_weighted_loss_is_the_weighted_mean():
  s = schedules.make_schedule("linear", 100)
  x0 = jnp.zeros((2, 3, 1))
  noise = jnp.arange(6.0).reshape(2, 3, 1)
  t = jnp.array([3, 70], jnp.int32)
  out = jnp.zeros_like(x0)
  w = jnp.array([[[1.0], [4.0], [1.0]], [[4.0], [1.0], [1.0]]])
  want = float(jnp.sum(w * noise**2) / jnp.sum(w))
  # float32 on both sides, relative: sums of 6 positive terms (w e^2, w), the square, the
  # product and the quotient: 16 roundings a side.
  rel = float32_tolerance(1.0, 2 * 16)
  assert float(schedules.diffusion_loss(s, "eps", out, x0, noise, t, w)) == pytest.approx(
      want, rel=rel)
  assert float(schedules.diffusion_loss(s, "eps", out, x0, noise, t, jnp.ones_like(w))) == \
      pytest.approx(float(schedules.diffusion_loss(s, "eps", out, x0, noise, t)), rel=rel)


def test_loss_gradient_under_jit():
  s = schedules.make_schedule("linear", 100)
  x0 = jnp.ones((2, 3))
  noise = jnp.full((2, 3), 0.5)
  t = jnp.array([3, 70], jnp.int32)
  out = jnp.zeros((2, 3))
  grad = jax.jit(jax.grad(schedules.diffusion_loss, argnums=2),
                 static_argnums=1)(s, "v", out, x0, noise, t)
  target = schedules.training_target(s, "v", x0, noise, t)
  _close(grad, 2.0 * (out - target) / out.size)


# The oracle's output is exact for whatever x_t it is given, so the roundings of earlier steps
# do not reach the last x0 estimate; the last step's do: the oracle <= 8 (edm: coefficients
# and F), the prediction <= 6, the update <= 12 (DDPM's mean), on terms <= 2 (|x0| <= 1, and at
# the last step x_t = a x0 + s eps with s = sqrt(1 - abar_0) ~ 0.01).
ORACLE_ATOL = float32_tolerance(2.0, 8 + 6 + 12)


def _oracle(full, x0, parameterization):
  """A model that knows x0: its output is exact for any x_t at timestep t."""
  def model_fn(x_t, t_model):
    abar = full.alphas_cumprod[t_model][:, None, None, None]
    eps = (x_t - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)
    c_skip, c_out = schedules.edm_coefficients(abar)
    return {"eps": eps, "x0": x0,
            "v": jnp.sqrt(abar) * eps - jnp.sqrt(1.0 - abar) * x0,
            "edm": (x0 - c_skip * x_t) / c_out}[parameterization]
  return model_fn


@pytest.mark.parametrize("sigma_data", [0.09, 0.5, 2.0])
def test_edm_sigma_data_is_the_wiener_gain_and_round_trips(sigma_data):
  """With the schedule's sigma_data, c_skip sqrt(abar) is the posterior-mean gain of
  zero-mean Gaussian data of that std, sd^2 / (sd^2 + sigma^2) with sigma^2 = (1 - abar) /
  abar, and the target and the x0 estimate invert each other."""
  s = schedules.make_schedule("linear", 1000, sigma_data=sigma_data)
  assert s.sigma_data == sigma_data
  assert schedules.respace(s, 10, "karras").sigma_data == sigma_data
  t = jnp.array([0, 40, 300, 999], jnp.int32)
  abar = np.asarray(s.alphas_cumprod, np.float64)[np.asarray(t)]
  c_skip, _ = schedules.edm_coefficients(jnp.asarray(abar, jnp.float32), s.sigma_data)
  gain = sigma_data**2 / (sigma_data**2 + (1 - abar) / abar)
  # float32 against float64: sqrt, sqrt, 3 products, the sum, the quotient, and abar's own
  # rounding amplified by at most 1 / abar (the product a^2 sd^2 against s^2)
  np.testing.assert_allclose(np.asarray(c_skip) * np.sqrt(abar), gain,
                             rtol=float32_tolerance(1.0 / abar.min(), 8))
  k1, k2 = jax.random.split(KEY)
  x0 = sigma_data * jax.random.normal(k1, (4, 5, 5, 1))
  noise = jax.random.normal(k2, x0.shape)
  x_t = schedules.q_sample(s, x0, t, noise)
  target = schedules.training_target(s, "edm", x0, noise, t)
  pred_x0, _ = schedules.predict_x0_eps(s, "edm", x_t, t, target)
  # as test_target_and_prediction_round_trip: 3 + 6 + 6 roundings on |x0| + |noise|
  _close(pred_x0, x0, atol=float32_tolerance(max_abs(x0) + max_abs(noise), 15))
  # the target has unit scale at every level: its std over 100 values is near 1 (not
  # rounding: a 100-sample std of a unit Gaussian lies within 0.3 of 1 with probability
  # > 0.999); with sigma_data = 0.5 for data of std 0.09 it would be near 0.2 at t = 0
  assert np.all(np.abs(np.std(np.asarray(target).reshape(4, -1), axis=1) - 1.0) < 0.3)
  with pytest.raises(InputError, match="diffusion.sigma_data"):
    schedules.make_schedule("linear", 1000, sigma_data=0.0)


def test_edm_preconditioning_has_no_floor_at_either_end():
  """x0 = c_skip x_t + c_out F: the estimate tends to x_t as the noise vanishes (whatever F
  says) and to SIGMA_DATA * F as it grows (whatever x_t is); in between c_skip x_t is the
  posterior mean of zero-mean data of std SIGMA_DATA, so F = 0 is the best linear guess."""
  sd = schedules.SIGMA_DATA
  c_skip, c_out = schedules.edm_coefficients(jnp.asarray([1.0 - 1e-7, 1e-7, 0.5]))
  # not rounding: at abar = 1 - 1e-7 and 1e-7 the limits are reached up to ~sqrt(1e-7) = 3e-4
  np.testing.assert_allclose(c_skip[:2], [1.0, 0.0], atol=1e-3)
  np.testing.assert_allclose(c_out[:2], [0.0, sd], atol=1e-3)
  a, s = np.sqrt(0.5), np.sqrt(0.5)  # abar = 0.5: Gaussian posterior mean a sd^2 / (a^2 sd^2 + s^2)
  # float32 against float64: sqrt, sqrt, 2 products, the sum, the quotient (x sd^2 is exact)
  np.testing.assert_allclose(c_skip[2], a * sd**2 / (a**2 * sd**2 + s**2),
                             rtol=float32_tolerance(1.0, 6))
  full = schedules.make_schedule("linear", 1000)
  x_t, out = jnp.full((2, 1), 0.7), jnp.full((2, 1), -1.3)
  x0, _ = schedules.predict_x0_eps(full, "edm", x_t, jnp.asarray([0, 999]), out)
  # not rounding: 0.02 bounds the other term, c_out F = -0.013 at t=0, c_skip x_t = 1e-3 at 999
  assert abs(float(x0[0, 0]) - 0.7 / np.sqrt(float(full.alphas_cumprod[0]))) < 0.02  # ~ x_t
  assert abs(float(x0[1, 0]) - sd * -1.3) < 0.02                                    # ~ sd F


@pytest.mark.parametrize("parameterization", ["eps", "x0", "v", "edm"])
@pytest.mark.parametrize("stepper", ["ddim", "ddpm", "dpm++2m"])
def test_sample_with_oracle_recovers_x0(parameterization, stepper):
  # DDIM with eta=0 keeps x_i on the line through x0 and the true noise; DDPM's
  # last step returns the predicted x0. The oracle is told the original
  # timestep, so a wrong `timesteps` mapping in respace or sample breaks this.
  full = schedules.make_schedule("linear", 1000)
  s = schedules.respace(full, 20)
  k1, k2 = jax.random.split(KEY)
  x0 = jax.random.uniform(k1, (2, 6, 6, 1), minval=-1, maxval=1)
  x_init = schedules.q_sample(s, x0, s.betas.shape[0] - 1, jax.random.normal(k2, x0.shape))
  run = jax.jit(lambda x, key: sampler.sample(
      _oracle(full, x0, parameterization), s, x, key,
      parameterization=parameterization, stepper=stepper))
  out = run(x_init, jax.random.key(1))
  assert out.shape == x0.shape
  _close(out, x0, atol=ORACLE_ATOL)


def _gaussian_posterior_mean(full, mu, sd):
  """E[x0 | x_t] for data x0 ~ N(mu, sd^2) per pixel: the exact x0 model of that data."""
  def model_fn(x_t, t_model):
    abar = full.alphas_cumprod[t_model].reshape((-1,) + (1,) * (x_t.ndim - 1))
    a = jnp.sqrt(abar)
    return mu + a * sd**2 / (abar * sd**2 + 1.0 - abar) * (x_t - a * mu)
  return model_fn


def test_dpmpp_2m_solves_the_probability_flow_ode_to_second_order():
  """For Gaussian data the probability-flow ODE is solved exactly: x_T at level T maps to
  mu + sd (x_T - a_T mu) / sqrt(a_T^2 sd^2 + 1 - a_T^2). DDIM (eta 0) is its first-order
  solver, DPM-Solver++(2M) a second-order one: its error falls ~ 1/n^2, DDIM's ~ 1/n."""
  full = schedules.make_schedule("linear", 1000)
  mu, sd = 0.3, 0.5
  x_T = jax.random.normal(KEY, (2, 8, 8, 1))
  errors = {}
  for n in (20, 50):
    s = schedules.respace(full, n)
    abar_T = float(s.alphas_cumprod[-1])
    exact = mu + sd * (x_T - np.sqrt(abar_T) * mu) / np.sqrt(abar_T * sd**2 + 1.0 - abar_T)
    for stepper in ("ddim", "dpm++2m"):
      out = sampler.sample(_gaussian_posterior_mean(full, mu, sd), s, x_T, KEY,
                           parameterization="x0", stepper=stepper)
      errors[stepper, n] = float(jnp.max(jnp.abs(out - exact)))
  # measured here: ddim 0.175 / 0.073, dpm++2m 0.053 / 0.0031 (float32 noise is ~1e-5)
  assert errors["ddim", 50] < errors["ddim", 20] / 2           # first order
  assert errors["dpm++2m", 50] < errors["dpm++2m", 20] / 6     # (50/20)^2 = 6.25
  assert errors["dpm++2m", 20] < errors["ddim", 20] / 2
  assert errors["dpm++2m", 50] < errors["ddim", 50] / 10


def test_multistep_stepper_refuses_repaint_loops():
  s = schedules.respace(schedules.make_schedule("linear", 1000), 5)
  x = jnp.zeros((1, 4, 4, 1))
  with pytest.raises(InputError, match="sampling.stepper: the multistep stepper 'dpm\\+\\+2m'"):
    sampler.sample(lambda x, t: x, s, x, KEY, stepper="dpm++2m",
                   resampling=sampler.Resampling(jump_length=1, max_loops=1))


@pytest.mark.parametrize("stepper,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpm++2m", 0.0)])
def test_a_walk_stopped_part_way_and_resumed_is_the_whole_walk(stepper, eta):
  """stop_index=k returns x at index k - 1; walking on from there (start_index=k - 1) gives
  the whole walk's sample. A multistep stepper restarts first order there, so for it the
  test asserts only the stopped part: equal for a traced and a static stop_index."""
  s = schedules.respace(schedules.make_schedule("linear", 1000), 8)
  x_init = jax.random.normal(jax.random.key(3), (2, 4, 4, 1))
  model_fn = lambda x, t: 0.5 * x + 0.01 * t[:, None, None, None]
  walk = lambda x, **kw: sampler.sample(model_fn, s, x, KEY, stepper=stepper, eta=eta, **kw)
  whole = jax.jit(walk)(x_init)
  stop = jax.jit(lambda x, k: walk(x, stop_index=k))
  part = stop(x_init, 3)
  np.testing.assert_array_equal(part, jax.jit(lambda x: walk(x, stop_index=3))(x_init))
  assert not np.allclose(part, whole) and not np.allclose(part, x_init)
  np.testing.assert_array_equal(stop(x_init, 8), x_init)   # no step taken
  if stepper not in steppers.MULTISTEP:
    resumed = jax.jit(lambda x: walk(x, start_index=2))(part)
    np.testing.assert_array_equal(resumed, whole)   # the same keys, steps and order
  with pytest.raises(ValueError, match="stop_index=0"):
    sampler.sample(model_fn, s, x_init, KEY, stop_index=2,
                   resampling=sampler.Resampling(jump_length=1, max_loops=1))


def test_ddim_recovers_x0_from_partial_start():
  full = schedules.make_schedule("cosine", 1000)
  s = schedules.respace(full, 25)
  x0 = jnp.linspace(-1, 1, 16).reshape(1, 4, 4, 1)
  x_init = schedules.q_sample(s, x0, 12, jnp.ones_like(x0))
  out = jax.jit(lambda x, i: sampler.sample(_oracle(full, x0, "eps"), s, x, KEY,
                                              start_index=i))(x_init, 12)
  _close(out, x0, atol=ORACLE_ATOL)


def _step(stepper, schedule_name, parameterization, i, eta=0.0, num_steps=None, key=KEY):
  s = schedules.make_schedule(schedule_name, 1000)
  if num_steps:
    s = schedules.respace(s, num_steps)
  step = jax.jit(steppers.STEPPERS[stepper], static_argnums=1)
  return step(s, parameterization, jnp.asarray(X_T), i, jnp.asarray(MODEL_OUT), key,
              eta=eta, clip_x0=None)


def test_ddpm_step_matches_monai():
  z = jax.random.normal(KEY, X_T.shape)
  out = _step("ddpm", "linear", "eps", 500)
  _close(out, np.array(MONAI_DDPM_EPS_T500_MEAN) + MONAI_DDPM_EPS_T500_STD * np.ravel(z),
         atol=_monai_atol(500))
  out = _step("ddpm", "cosine", "x0", 700)
  _close(out, np.array(MONAI_DDPM_X0_COSINE_T700_MEAN)
         + MONAI_DDPM_X0_COSINE_T700_STD * np.ravel(z), atol=_monai_atol(700))
  _close(_step("ddpm", "linear", "v", 0), MONAI_DDPM_V_T0, atol=_monai_atol(0))


def test_ddim_step_matches_monai():
  # uniform respacing to 50 steps: index 25 is t=500, index 1 is t=20.
  _close(_step("ddim", "linear", "eps", 25, num_steps=50), MONAI_DDIM_EPS_T500,
         atol=_monai_atol(500))
  _close(_step("ddim", "linear", "v", 1, num_steps=50), MONAI_DDIM_V_T20, atol=_monai_atol(20))
  z = jax.random.normal(KEY, X_T.shape)
  out = _step("ddim", "linear", "eps", 25, eta=0.5, num_steps=50)
  _close(out, np.array(MONAI_DDIM_EPS_ETA05_T500_MEAN)
         + MONAI_DDIM_EPS_ETA05_T500_STD * np.ravel(z), atol=_monai_atol(500))


def test_clip_x0_bounds_the_final_sample():
  s = schedules.respace(schedules.make_schedule("linear", 1000), 10)
  x_init = jnp.full((2, 3, 3, 1), 4.0)
  out = sampler.sample(lambda x, t: jnp.full_like(x, 5.0), s, x_init, KEY,
                         parameterization="x0", clip_x0=1.0)
  _close(out, jnp.ones_like(x_init))


def test_sample_calls_hook_and_model_in_order():
  s = schedules.respace(schedules.make_schedule("linear", 1000), 8)
  seen_t, seen_i = [], []
  mask = jnp.zeros((2, 4, 4, 1)).at[:, :2].set(1.0)

  def model_fn(x, t):
    jax.debug.callback(lambda t: seen_t.append(np.asarray(t)), t, ordered=True)
    return jnp.zeros_like(x)

  def post_step_fn(x, i, key):
    jax.debug.callback(lambda i: seen_i.append(int(i)), i, ordered=True)
    assert key.dtype == KEY.dtype
    return jnp.where(mask > 0, 7.0, x)

  run = jax.jit(lambda x, key: sampler.sample(
      model_fn, s, x, key, stepper="ddpm", start_index=5, post_step_fn=post_step_fn))
  out = run(jax.random.normal(KEY, mask.shape), KEY)
  jax.effects_barrier()
  assert out.shape == mask.shape
  np.testing.assert_array_equal(np.asarray(out)[:, :2], 7.0)
  assert not np.any(np.asarray(out)[:, 2:] == 7.0)
  assert seen_i == [5, 4, 3, 2, 1, 0]
  expected_t = np.asarray(s.timesteps)[[5, 4, 3, 2, 1, 0]]
  assert [tuple(t) for t in seen_t] == [(t, t) for t in expected_t]


def test_sample_noise_depends_on_key():
  s = schedules.respace(schedules.make_schedule("linear", 1000), 5)
  x = jnp.zeros((1, 3, 3, 1))
  model_fn = lambda x, t: jnp.zeros_like(x)
  a = sampler.sample(model_fn, s, x, jax.random.key(1), stepper="ddim", eta=1.0)
  b = sampler.sample(model_fn, s, x, jax.random.key(1), stepper="ddim", eta=1.0)
  c = sampler.sample(model_fn, s, x, jax.random.key(2), stepper="ddim", eta=1.0)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_eta_band_adds_noise_only_at_the_noise_levels_in_the_band():
  s = schedules.respace(schedules.make_schedule("linear", 1000), 10)
  abar = np.asarray(s.alphas_cumprod, np.float64)
  sigma = np.sqrt((1.0 - abar) / abar)  # increasing with the index
  band = ((sigma[2] + sigma[3]) / 2, (sigma[6] + sigma[7]) / 2)  # midway: no float32 tie
  etas = [float(sampler.band_eta(s, i, 0.5, band)) for i in range(10)]
  assert etas == [0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0, 0, 0]
  x = jax.random.normal(KEY, (1, 4, 4, 1))
  model_fn = lambda x, t: 0.5 * x
  walk = lambda **kw: np.asarray(sampler.sample(model_fn, s, x, KEY, stepper="ddim", **kw))
  deterministic, everywhere = walk(eta=0.0), walk(eta=1.0)
  above = (2 * sigma[-1], 3 * sigma[-1])
  np.testing.assert_array_equal(walk(eta=1.0, eta_band=above), deterministic)
  np.testing.assert_array_equal(walk(eta=1.0, eta_band=(0.0, 2 * sigma[-1])), everywhere)
  in_band = walk(eta=1.0, eta_band=band)
  assert not np.allclose(in_band, deterministic) and not np.allclose(in_band, everywhere)


def test_unknown_names_raise_input_error():
  s = schedules.make_schedule("linear", 10)
  x = jnp.zeros((1, 2))
  t = jnp.zeros((1,), jnp.int32)
  cases = [
      ("diffusion.schedule", lambda: schedules.make_schedule("quadratic")),
      ("sampling.stepper", lambda: sampler.sample(lambda x, t: x, s, x, KEY, stepper="euler")),
      ("diffusion.parameterization",
       lambda: sampler.sample(lambda x, t: x, s, x, KEY, parameterization="score")),
      ("diffusion.parameterization", lambda: schedules.training_target(s, "score", x, x, t)),
      ("diffusion.parameterization", lambda: schedules.predict_x0_eps(s, "score", x, t, x)),
      ("sampling.spacing", lambda: schedules.respace(s, 5, "cubic")),
      ("sampling.steps", lambda: schedules.respace(s, 11)),
  ]
  for where, fn in cases:
    with pytest.raises(InputError) as info:
      fn()
    assert info.value.where == where


def test_resampling_ops_walk_levels_consistently():
  res = sampler.Resampling(jump_length=3, max_loops=2)
  ops = sampler.resampling_ops(10, res)
  level = 10  # x starts at index 10; down at i needs level i, up at m needs level m - 1
  for i, is_down, r in ops:
    if is_down:
      assert level == i
      level -= 1
    else:
      assert level == i - 1
      level += 1
  assert level == -1
  main = ops[ops[:, 2] == 0]
  np.testing.assert_array_equal(main[:, 0], np.arange(10, -1, -1))
  anchors = [a for a in range(11) if a % 3 == 0 and a + 2 <= 10]  # 0, 3, 6
  assert (ops[:, 2] > 0).sum() == len(anchors) * 2 * (2 * 3)


def test_resampling_with_zero_loops_equals_plain_sampling():
  s = schedules.respace(schedules.make_schedule("linear", 1000), 10)
  x0 = jnp.linspace(-1, 1, 32).reshape(2, 4, 4, 1)
  model_fn = lambda x, t: jnp.tanh(x + 0.001 * t[:, None, None, None])
  x_init = jax.random.normal(KEY, x0.shape)
  plain = sampler.sample(model_fn, s, x_init, KEY, stepper="ddpm")
  none = sampler.sample(model_fn, s, x_init, KEY, stepper="ddpm", resampling=sampler.Resampling(
      jump_length=2, max_loops=3, loops_fn=lambda x0_hat, i: jnp.zeros((), jnp.int32)))
  np.testing.assert_array_equal(plain, none)


def test_resampling_moves_only_the_voxels_that_loop():
  # A pointwise model keeps voxels independent, so voxels that sit every loop
  # out must end exactly where plain sampling puts them, and the others not.
  full = schedules.make_schedule("linear", 1000)
  s = schedules.respace(full, 10)
  x0 = jnp.linspace(-1, 1, 32).reshape(2, 4, 4, 1)
  x_init = jax.random.normal(KEY, x0.shape)
  model_fn = lambda x, t: 0.5 * x
  takes_part = (jnp.arange(x0.size).reshape(x0.shape) % 2).astype(jnp.int32)
  plain = sampler.sample(model_fn, s, x_init, KEY, stepper="ddpm")
  res = sampler.Resampling(jump_length=1, max_loops=2, loops_fn=lambda x0_hat, i: 2 * takes_part)
  out = jax.jit(lambda x: sampler.sample(model_fn, s, x, KEY, stepper="ddpm", resampling=res))(x_init)
  still = takes_part == 0
  np.testing.assert_array_equal(out[still], plain[still])
  assert np.all(np.abs(out - plain)[~still] > 0)


def test_repaint_harmonises_with_an_oracle():
  # With an oracle model (eps of the true x0), DDIM plus resampling still lands on x0.
  full = schedules.make_schedule("linear", 1000)
  s = schedules.respace(full, 10)
  x0 = jax.random.uniform(KEY, (1, 6, 6, 1), minval=-1, maxval=1)
  x_init = jax.random.normal(jax.random.key(3), x0.shape)
  res = sampler.Resampling(jump_length=2, max_loops=2)
  out = sampler.sample(_oracle(full, x0, "eps"), s, x_init, KEY, resampling=res)
  _close(out, x0, atol=ORACLE_ATOL)


@pytest.mark.parametrize("n", [0, 1, 5, 19, 70])
def test_restricted_slices_have_one_shape_for_every_mask(n):
  mask = np.zeros((3, 3, 70))
  mask[1, 1, 70 - n:] = 1
  idx = volume_denoisers.restricted_slices(mask, 2, dilation=0)
  assert idx.shape == (70,) and list(idx[:n]) == list(range(70 - n, 70))
  assert set(idx[n:]) <= {70}


@pytest.mark.parametrize("axis,chunk_size", [(0, 4), (1, 16), (2, 4)])
def test_slicewise_on_balanced_chunks_equals_slice_by_slice(axis, chunk_size):
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  rng = np.random.default_rng(axis)
  x = rng.normal(size=(9, 10, 11)).astype(np.float32)
  cond = rng.normal(size=(9, 10, 11, 2)).astype(np.float32)
  mask = np.zeros(x.shape)
  mask[tuple(slice(2, 7) if a == axis else slice(None) for a in range(3))] = 1  # 5 slices
  apply = lambda xs, cs, t: xs * 2.0 + cs[..., :1] - cs[..., 1:] + t[:, None, None, None]
  idx = volume_denoisers.restricted_slices(mask, axis, dilation=0)
  calls = []

  def counted(xs, cs, t):
    jax.debug.callback(lambda: calls.append(xs.shape[0]))
    return apply(xs, cs, t)

  # the slices are an argument: one compiled function for every mask of this shape
  devices = len(jax.devices())
  run = jax.jit(lambda x, idx: volume_denoisers.slicewise(
      counted, jnp.asarray(cond), axis, idx, chunk_size=chunk_size, mesh=mesh,
      multiple=devices)(x, 3))
  eps = np.asarray(run(jnp.asarray(x), idx))
  # full chunks, then blocks of SMALL_CHUNK: only chunks that hold one of the 5 slices run
  per = max(chunk_size // devices, 1) * devices
  small = min(per, -(-volume_denoisers.SMALL_CHUNK // devices) * devices)
  assert calls == [per] * (5 // per) + [small] * -(-(5 % per) // small)
  want = x * 2.0 + cond[..., 0] - cond[..., 1] + 3.0
  inside = mask > 0
  # 3 float32 adds on partial sums <= 2|x| + 2|cond| + 3, in `apply` under jit and in numpy
  bound = 2 * max_abs(x) + 2 * max_abs(cond) + 3
  np.testing.assert_allclose(eps[inside], want[inside], rtol=0,
                             atol=float32_tolerance(bound, 2 * 3))
  assert np.all(eps[~inside] == 0)
  other = np.zeros(x.shape)  # another mask of the same volume shape: no new compilation
  other[tuple(slice(0, 1) if a == axis else slice(None) for a in range(3))] = 1
  eps = np.asarray(run(jnp.asarray(x), volume_denoisers.restricted_slices(other, axis,
                                                                          dilation=0)))
  assert run._cache_size() == 1 and np.all(eps[other == 0] == 0)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_fuse_is_the_weighted_sum_with_weights_summing_to_one(n):
  rng = np.random.default_rng(10 + n)
  shape = (3, 4, 5)
  eps = [rng.normal(size=shape) for _ in range(n)]
  w = rng.normal(size=shape + (n - 1,)) * 0.3
  r = rng.normal(size=shape)
  weights = [1.0 / n + w[..., i] for i in range(n - 1)] + [1.0 / n - w.sum(-1)]
  want = sum(wi * e for wi, e in zip(weights, eps)) + 0.5 * r
  got = volume_denoisers.fuse(eps, w, r, residual_scale=0.5)
  np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
  with pytest.raises(ValueError, match="need weights of shape"):
    volume_denoisers.fuse(eps, w[..., :1].repeat(n, -1), r)


def test_equivalent_timesteps_match_noise_levels_across_step_counts():
  """The timestep-scale bug of the released code: a model trained with 2000 steps queried
  with the chain's (1000-step) timestep sees the wrong noise level."""
  chain = schedules.make_schedule("linear", 1000)
  np.testing.assert_array_equal(schedules.equivalent_timesteps(chain, chain), np.arange(1000))
  for model in (schedules.make_schedule("linear", 2000, 5e-5, 0.01),
                schedules.make_schedule("cosine", 500)):
    table = schedules.equivalent_timesteps(chain, model)
    a_chain = np.asarray(chain.alphas_cumprod)
    a_model = np.asarray(model.alphas_cumprod)
    err = np.abs(a_model[table] - a_chain)
    gaps = np.abs(a_model[:, None] - a_chain[None, :]).min(0)  # brute-force nearest
    np.testing.assert_allclose(err, gaps, atol=1e-7)
    assert np.all(np.diff(table) >= 0)                          # monotone in t
    naive = np.minimum(np.arange(1000), len(a_model) - 1)       # the chain's number as is
    assert np.abs(a_model[naive] - a_chain).max() > 10 * err.max()
