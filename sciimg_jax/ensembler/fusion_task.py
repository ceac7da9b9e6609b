"""Training of Diff-Ensembler's 3D fusion network: a task of the shared trainer.

The 2D models (`fusion.members`: their training workdirs) are frozen: their EMA
parameters are the trainer's frozen parameters, and only the 3D U-Net trains. A batch
holds random 3D crops (`fusion.crop_size`) of the training volumes. At each step a
timestep t of the ensemble's chain (`diffusion`) and noise are drawn per crop, every 2D
model runs on every slice of the noisy crop along its axis (`slice_models.along_axis`, told
its own timestep), and the fusion network combines their epsilons
(`fusion.fused_eps`). The loss on epsilon is `fusion.l1_weight` x L1 +
`fusion.l2_weight` x L2 (5 and 150 in the released code). `fusion.min_snr_gamma` > 0
weights each crop's epsilon error by sqrt(min(SNR_t, gamma) / SNR_t) (min-SNR weighting,
Hang et al. 2023; SNR_t = abar_t / (1 - abar_t)): at low noise the error then counts as
the x0 error it causes, which keeps x0-parameterised 2D models, whose epsilon is
(x_t - sqrt(abar) x0) / sqrt(1 - abar), from making a few low-noise crops dominate.
`fusion.loss_on = 'x0'` scores the fused x0 instead at every noise level (the epsilon
error divided by sqrt(SNR_t)): what a sample is made of.

`fusion.init_from` names a trained fusion workdir (over the same members) whose parameters
start the training: the released schedule trains the eps variant on crops, then goes on
with whole volumes and the feature variant, its adapters zero-initialised (`start_from`).

`fusion.rollout_fraction` = r > 0 trains on what the fused sampler will see: each batch is,
with probability r, drawn from the members' own walk instead of q(x_t | x0). The plain
average of the 2D models walks the sampler's chain (`sampling`: steps, spacing, stepper,
eta, clipping, and SR data consistency, the crops then placed on the low-resolution
blocks) from noise down to a random visited index k (a rollout, no gradient), and the
fusion is trained at that x_k, timestep `timesteps[k]`, against the epsilon it implies for
the crop's true x0, (x_k - sqrt(abar) x0) / sqrt(1 - abar) (the x0 loss then scores the
fused x0 against x0 itself; with the eps loss a low-noise rollout implies a large epsilon,
its x0 error over sqrt(1 - abar), so pair rollouts with the x0 loss or min-SNR weighting).
A rollout batch costs up to `sampling.steps` more member evaluations; the logged `rollout`
is 1 where the logged step's batch was one.

Evaluation scores fixed held-out crops, one at each timestep the sampler visits
(`sampling.steps`, `sampling.spacing`), for the fused denoiser against the plain average
of the same 2D models: the epsilon MSE (`eval_eps_mse_fused`, `eval_eps_mse_average`) and
the MSE of the x0 it implies, clipped as the sampler does (`sampling.clip_x0`;
`eval_x0_mse_*`). The second is what a sample sees; the first is dominated by the
lowest-noise crop when the 2D models predict x0. The fusion earns its keep when its
errors are the lower.

`members.json` in the workdir records which 2D models (workdir, axis, checkpoint step,
config) the fusion was trained on; resuming with others, or sampling the fusion with
others (`fusion.load_fusion`), stops with a message.

  python main.py --config=configs/ensembler/fusion.py --workdir=runs/sr-fusion \
      --config.fusion.members='("runs/sr-axial","runs/sr-coronal","runs/sr-sagittal")'
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines import volume_cases
from sciimg_jax.core import atomic_files
from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import sampling_config
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import slice_models
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import consistency
from sciimg_jax.ensembler import fusion
from sciimg_jax.ensembler import members as members_lib
from sciimg_jax.ensembler import slice_inputs
from sciimg_jax.ensembler import translator

ROLLOUT_STREAM = 3  # fold_in salt of a batch's rollout keys (its other keys are unchanged)


def check_config(config):
  trainer.check_steps(config.train)
  f = config.fusion
  r = f.get("rollout_fraction", 0.0)
  if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
    raise InputError("fusion.rollout_fraction", f"is {r!r}; the share of batches drawn from "
                     "the members' own walk must lie in [0, 1]")
  if r and not f.members:
    raise InputError("fusion.rollout_fraction", "rolls out the trained 2D models' own walk; "
                     "name their workdirs in fusion.members")
  if len(f.members) < 2:
    raise InputError("fusion.members", f"needs at least 2 trained 2D models, got {len(f.members)}")
  if f.get("variant", "eps") not in fusion.VARIANTS:
    raise InputError("fusion.variant", f"unknown variant {f.variant!r}; known: "
                     f"{', '.join(fusion.VARIANTS)}")
  fusion.space_chain(config)  # checks fusion.space
  if f.get("loss_on", "eps") not in ("eps", "x0"):
    raise InputError("fusion.loss_on", f"is {f.loss_on!r}; use 'eps' or 'x0'")
  if f.get("loss_on", "eps") == "x0" and f.get("min_snr_gamma", 0.0):
    raise InputError("fusion.min_snr_gamma", "weights an epsilon loss; with "
                     "fusion.loss_on='x0' set it to 0")
  if f.l1_weight < 0 or f.l2_weight < 0 or f.l1_weight + f.l2_weight == 0:
    raise InputError("fusion.l1_weight", "the L1 and L2 weights must be >= 0, not both 0")
  volume_cases.check_data_config(config.data)
  if r:
    sampling_config.check(config.sampling)


class FusionTask:
  """`trainer.Task` for the 3D fusion network over frozen 2D members."""

  def __init__(self, config, workdir):
    check_config(config)
    self.config = config
    self.mesh = sharding.make_mesh()
    self.members = members_lib.load_members(config.fusion.members, config.data,
                                            config.diffusion, self.mesh)
    record = pathlib.Path(workdir) / fusion.MEMBERS_FILE
    if record.is_file():
      fusion.check_signatures(json.loads(record.read_text()), self.members, record)
    else:
      atomic_files.write_json(record, [fusion.signature(m) for m in self.members])
    self.chain = schedules.schedule_from_config(config.diffusion)
    self.space_chain = fusion.space_chain(config)
    s = config.sampling
    self.rollout_fraction = float(config.fusion.get("rollout_fraction", 0.0))
    self.walk = sampling_config.stage(s)
    self.walk_chain = schedules.respace(self.chain, s.steps, s.spacing)
    self.pool = translator.pooled_condition(config.data) if s.get("data_consistency") else None
    splits = slice_inputs.prepared_splits(config, workdir)
    self.sources = {k: volume_cases.CropSource(v, config.data) for k, v in splits.items()}
    align = self.pool[1] if self.pool and self.rollout_fraction else 1
    self.crop = volume_cases.RandomCrop(self.sources["train"], config.fusion.crop_size,
                                        align=align)
    self._eval = None

  def create_model(self, rngs, dtype):
    module = fusion.create_model(self.config, rngs, dtype, self.members)
    if self.config.fusion.get("init_from"):
      start_from(module, self.config.fusion.init_from, self.members, self.config, self.mesh)
    return module

  def frozen_params(self, mesh):
    return [m.params for m in self.members]

  def train_iterator(self, batch_size_per_process):
    return volume_cases.train_iterator(
        self.sources["train"], seed=self.config.seed, batch_size=batch_size_per_process,
        operations=[self.crop], num_workers=self.config.data.num_workers)

  def member_eps(self, frozen, x_t, cond, t):
    """The members' epsilons [(B, X, Y, Z)] and, for the feature variant, their decoder
    features concatenated (B, X, Y, Z, F) (else None)."""
    with_features = fusion.uses_features(self.config)
    outs = [slice_models.along_axis(m, p, x_t, cond, t, to="eps", features=with_features)
            for m, p in zip(self.members, frozen)]
    features = jnp.concatenate([o[..., 1:] for o in outs], -1) if with_features else None
    return [o[..., 0] for o in outs], features

  def average_eps(self, frozen, x_t, cond, t):
    """The plain average of the members' epsilons (B, X, Y, Z, 1): the rollout's denoiser."""
    outs = [slice_models.along_axis(m, p, x_t, cond, t, to="eps")
            for m, p in zip(self.members, frozen)]
    return sum(outs) / len(outs)

  def rollout(self, frozen, x0, cond, key):
    """(x_k, t): the average walk on crops (B, X, Y, Z, 1) from noise down to a random
    visited index k of the sampler's chain, and the training timestep of index k (B,)."""
    chain, walk = self.walk_chain, self.walk
    k_key, noise_key, walk_key = jax.random.split(key, 3)
    num = chain.betas.shape[0]
    k = jax.random.randint(k_key, (), 0, num)
    post = None
    if self.pool is not None:
      low = jax.vmap(lambda c: translator.low_resolution(self.config.data, self.pool, c))(cond)

      def post(x_prev, i, key_i):
        keys = jax.random.split(key_i, x_prev.shape[0])
        one = lambda x, y, kk: consistency.low_pass_replacement(chain, y, self.pool[1])(
            x[..., 0], i, kk)[..., None]
        return jax.vmap(one)(x_prev, low, keys)

    x_init = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_k = sampler.sample(lambda x, t: self.average_eps(frozen, x, cond, t), chain, x_init,
                         walk_key, parameterization="eps", **walk.step_args,
                         clip_x0=walk.clip, start_index=num - 1, stop_index=k + 1,
                         post_step_fn=post)
    return x_k, jnp.full((x0.shape[0],), chain.timesteps[k], jnp.int32)

  def rolled_out(self, frozen, x0, cond, key):
    """(x_k, t, eps): a rollout and the epsilon it implies for the true x0."""
    x_k, t = self.rollout(frozen, x0, cond, key)
    abar = self.chain.alphas_cumprod[t].reshape((-1,) + (1,) * (x0.ndim - 1))
    return x_k, t, (x_k - jnp.sqrt(abar) * x0) / jnp.sqrt(1.0 - abar)

  def loss(self, model, batch, key, frozen):
    f = self.config.fusion
    x0, cond = batch["target"], batch["cond"]
    t_key, noise_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, self.chain.betas.shape[0])
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = schedules.q_sample(self.chain, x0, t, noise)
    aux = {}
    if self.rollout_fraction:  # with probability r, x_t from the members' own walk instead
      use_key, roll_key = jax.random.split(jax.random.fold_in(key, ROLLOUT_STREAM))
      use = jax.random.bernoulli(use_key, self.rollout_fraction)
      x_t, t, noise = jax.lax.stop_gradient(jax.lax.cond(
          use, lambda: self.rolled_out(frozen, x0, cond, roll_key), lambda: (x_t, t, noise)))
      aux["rollout"] = use.astype(jnp.float32)
    eps, features = jax.lax.stop_gradient(self.member_eps(frozen, x_t, cond, t))
    fused = fusion.fused_eps(model, None, x_t[..., 0], cond, eps, t, f.residual_scale, features,
                             self.space_chain)
    err = fused - noise[..., 0]
    abar = self.chain.alphas_cumprod[t]
    snr = (abar / (1.0 - abar)).reshape((-1,) + (1,) * (err.ndim - 1))
    if f.get("loss_on", "eps") == "x0":  # the fused x0's error, (x_t - sqrt(1 - abar) eps) / sqrt(abar)
      err = err / jnp.sqrt(snr)
    gamma = f.get("min_snr_gamma", 0.0)
    if gamma:  # min-SNR weighting: the error of x0 where the noise is low, of eps where high
      err = err * jnp.sqrt(jnp.minimum(snr, gamma) / snr)
    l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
    return f.l1_weight * l1 + f.l2_weight * l2, {"l1": l1, "l2": l2, **aux}

  def evaluate(self, net, params, frozen, step, key, workdir):
    if self._eval is None:
      self._eval = self._make_eval(net)
    errors = self._eval(params, frozen, *self._eval_batch)
    return {f"eval_{what}_mse_{name}": float(errors[what][name])
            for what in ("eps", "x0") for name in ("fused", "average")}

  def eval_examples(self, n):
    """n fixed crops (or whole volumes) of the held-out cases, cycling through them."""
    return volume_cases.fixed_examples(self.sources["eval"], self.config.fusion.crop_size, n,
                                       self.config.seed)

  def _make_eval(self, net):
    s = self.config.sampling
    t = np.asarray(schedules.respace(self.chain, s.steps, s.spacing).timesteps)
    items = self.eval_examples(len(t))
    x0 = np.stack([e["target"] for e in items])
    cond = np.stack([e["cond"] for e in items])
    rng = np.random.default_rng([self.config.seed, 1])  # off the crops' stream
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    self._eval_batch = (x0, cond, t, noise)
    f, clip = self.config.fusion, s.clip_x0 or None

    def evaluate(params, frozen, x0, cond, t, noise):
      x_t = schedules.q_sample(self.chain, x0, t, noise)
      eps, features = self.member_eps(frozen, x_t, cond, t)
      out = {"fused": fusion.fused_eps(net, params, x_t[..., 0], cond, eps, t,
                                       f.residual_scale, features, self.space_chain),
             "average": sum(eps) / len(eps)}
      errors = {"eps": {}, "x0": {}}
      for name, e in out.items():
        x0_hat, _ = schedules.predict_x0_eps(self.chain, "eps", x_t[..., 0], t, e)
        errors["eps"][name] = jnp.mean(jnp.square(e - noise[..., 0]))
        if clip:
          x0_hat = jnp.clip(x0_hat, -clip, clip)
        errors["x0"][name] = jnp.mean(jnp.square(x0_hat - x0[..., 0]))
      return errors

    return jax.jit(evaluate)


def start_from(module, workdir, members, config, mesh):
  """Sets `module`'s parameters to the EMA parameters of the trained fusion in `workdir`
  (over the same members). An eps-variant fusion may start a feature-variant one: its
  U-Net takes them and the feature adapters keep their zero initialisation, so the
  started network is the trained one exactly (the released code's crops-then-whole-volumes
  schedule)."""
  source = fusion.load_fusion(workdir, members, config.data, mesh)
  spaces = [c.fusion.get("space", "eps") for c in (source.config, config)]
  if spaces[0] != spaces[1]:
    raise InputError("fusion.init_from", f"{workdir} fuses in {spaces[0]} space, this config "
                     f"(fusion.space) in {spaces[1]}: the started network would not be the "
                     "trained one")
  source = source.net.module(source.params)
  into = module
  if isinstance(module, fusion.FeatureFusion) and not isinstance(source, fusion.FeatureFusion):
    into = module.unet
  have, want = nnx.state(source, nnx.Param), nnx.state(into, nnx.Param)
  shapes = lambda state: jax.tree.map(lambda v: tuple(v.shape), nnx.to_pure_dict(state))
  if shapes(have) != shapes(want):
    raise InputError("fusion.init_from", f"{workdir} holds a fusion network of another shape "
                     "(model, data channels or variant) than this config's")
  nnx.update(into, have)


def train_fusion(config, workdir, *, stop_at_step=None):
  """The `ensembler_fusion` job: trains the fusion network in `workdir` (resuming if it can)."""
  return trainer.train(FusionTask(config, workdir), config, workdir, stop_at_step=stop_at_step)
