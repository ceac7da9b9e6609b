"""The one 2D slice task of the shared trainer: a network on slices of volumes.

Both volume methods train 2D networks on slices along `data.axis`: the network sees the
slice's condition channels (and, for diffusion, x_t first) and learns what
`train.objective` says (`OBJECTIVES`):

  diffusion     epsilon, x0 or v of the target slice (`diffusion.parameterization`), the
                2D models the volume samplers use (`schedules.conditional_denoising_loss`,
                optionally weighted per pixel by the method);
  regression    the target slice itself with an L1 loss, t = 0 (a deterministic baseline);
  segmentation  a 0/1 label slice with binary cross entropy plus soft Dice.

What the network sees is the method's: a `SliceInputs` object supplies the channel
names, the data sources and batches, per-pixel loss weights, the constraint a diffusion
prediction obeys (inpainting's known region) and the evaluation's figure and metrics.
The network's input channels follow from them (`in_channels`: x_t for diffusion, then the
named channels); the task records `model.in_channels` in the run's config, which
rebuilds the network for inference (`trained_models`).
Evaluation predicts a fixed held-out batch with the EMA parameters (diffusion: the
`sampling` block's walk, key `fold_in(key, 0)` for the starting noise and
`fold_in(key, 1)` for the walk) and hands the prediction to the method.
"""

import dataclasses
from typing import Protocol

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from sciimg_jax.core import models
from sciimg_jax.core import sharding
from sciimg_jax.core import slice_context
from sciimg_jax.core import trainer
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import sampling_config
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError


def soft_dice(probability, labels, eps=1.0):
  """1 - soft Dice over the batch (sum over every voxel), smoothed by `eps`."""
  inter = jnp.sum(probability * labels)
  return 1.0 - (2.0 * inter + eps) / (jnp.sum(probability) + jnp.sum(labels) + eps)


SIGMA_DATA_BATCHES = 16  # training batches `measure_sigma_data` reads


def measure_sigma_data(config, inputs, source, num_batches=SIGMA_DATA_BATCHES):
  """The edm preconditioning's sigma_data from the data: the root mean square of the
  training targets over the pixels the model generates (`inputs.generated`, weighted; all
  pixels where it gives None) of the first `num_batches` global training batches, summed
  over every process (float64), so every process gets the same value."""
  iterator = inputs.train_batches(config, source, config.data.batch_size // jax.process_count())
  sums = np.zeros(2, np.float64)
  for _ in range(num_batches):
    batch = next(iterator)
    target = np.asarray(batch["target"], np.float64)
    w = inputs.generated(config, batch)
    w = np.ones_like(target) if w is None else np.broadcast_to(np.asarray(w, np.float64),
                                                                target.shape)
    sums += (np.sum(w * target**2), np.sum(w))
  sums = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, 2).sum(axis=0)
  if not sums[1] > 0 or not sums[0] > 0:
    raise InputError("diffusion.sigma_data", f"cannot be measured: the first {num_batches} "
                     "training batches have no generated pixel, or all their targets are 0; "
                     "set it (e.g. 0.5)")
  return float(np.sqrt(sums[0] / sums[1]))


def _no_time(cond):
  return jnp.zeros((cond.shape[0],), jnp.int32)


def _diffusion_loss(task, model, batch, key):
  return schedules.conditional_denoising_loss(
      task.schedule, task.config.diffusion.parameterization, model, batch["target"],
      batch["cond"], key, task.inputs.loss_weights(task.config, batch),
      task.config.diffusion.get("noise_levels", "uniform"))


def _regression_loss(task, model, batch, key):
  out = model(batch["cond"], _no_time(batch["cond"]))
  return jnp.mean(jnp.abs(out.astype(jnp.float32) - batch["target"]))


def _segmentation_loss(task, model, batch, key):
  logits = model(batch["cond"], _no_time(batch["cond"])).astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, batch["target"]).mean()
  return bce + soft_dice(jax.nn.sigmoid(logits), batch["target"])


def _diffusion_predictor(config, net, inputs):
  d, walk = config.diffusion, sampling_config.stage(config.sampling)
  schedule = schedules.respace(schedules.schedule_from_config(d), walk.steps, walk.spacing)

  def predict(params, cond, key):
    x_init = jax.random.normal(jax.random.fold_in(key, 0), cond.shape[:-1] + (1,), cond.dtype)
    post_step, finish = inputs.constraint(config, cond, schedule)
    model_fn = lambda x, t: net(params, jnp.concatenate([x, cond], -1), t).astype(jnp.float32)
    x0 = sampler.sample(model_fn, schedule, x_init, jax.random.fold_in(key, 1),
                        parameterization=d.parameterization, **walk.step_args,
                        clip_x0=inputs.chain_clip(config, walk.clip), post_step_fn=post_step)
    return finish(x0)
  return predict


def _deterministic_predictor(activation):
  def build(config, net, inputs):
    def predict(params, cond, key):
      return activation(net(params, cond, _no_time(cond)).astype(jnp.float32))
    return predict
  return build


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: object          # (task, model, batch, key) -> scalar
  noisy_input: bool     # x_t is the network's first input channel
  predictor: object     # (config, net, inputs) -> predict(params, cond, key)
  labels: bool = False  # learns a 0/1 label map (a probability), not an image


OBJECTIVES = {
    "diffusion": Objective(_diffusion_loss, True, _diffusion_predictor),
    "regression": Objective(_regression_loss, False, _deterministic_predictor(lambda x: x)),
    "segmentation": Objective(_segmentation_loss, False,
                              _deterministic_predictor(jax.nn.sigmoid), labels=True),
}


def objective_of(config):
  name = config.train.get("objective", "diffusion")
  if name not in OBJECTIVES:
    raise InputError("train.objective", f"unknown objective {name!r}; known: "
                     f"{', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]


class SliceInputs(Protocol):
  """What a method supplies to the slice task."""

  def check_config(self, config): ...
  def channel_names(self, config) -> tuple: ...          # the cond channels, in order
  def sources(self, config, workdir) -> dict: ...        # {'train': source, 'eval': source}
  def train_batches(self, config, source, batch_size): ...  # this process's training batches
  def loss_weights(self, config, batch): ...             # None or per-pixel weights
  def generated(self, config, batch): ...                # None or the pixels it generates
  def eval_batch(self, config, source) -> dict: ...      # {'cond': ..., 'target': ...}
  def constraint(self, config, cond, schedule): ...      # (post_step_fn, finish)
  def chain_clip(self, config, clip): ...                # sampling.clip_x0 in the chain's units
  # The evaluation's figures and scalars of the prediction of `eval_batch`.
  def eval_scores(self, config, batch, prediction, step, workdir) -> dict: ...


def in_channels(config, inputs):
  """The network's input channels: x_t first (an objective with a noisy input), then the
  condition channels the inputs name."""
  return int(objective_of(config).noisy_input) + len(tuple(inputs.channel_names(config)))


def with_in_channels(config, inputs):
  """`config` with `model.in_channels` set to `in_channels` (in place): what the run's stored
  config rebuilds the network from (`trained_models`); also for a fresh network of a config
  outside training (benchmarks, tests)."""
  with config.model.unlocked():
    config.model.in_channels = in_channels(config, inputs)
  return config


def check_config(config, inputs):
  """Stops on an objective, channel count or sampling setting the task cannot train with."""
  trainer.check_steps(config.train)  # before the inputs are prepared
  objective = objective_of(config)
  schedules.check_parameterization(config.diffusion.parameterization)
  schedules.check_noise_levels(config.diffusion.get("noise_levels", "uniform"))
  if not config.diffusion.get("sigma_data", 0.5) >= 0:
    raise InputError("diffusion.sigma_data", f"must be > 0, or 0 to measure it from the "
                     f"training targets; got {config.diffusion.sigma_data!r}")
  slice_context.check(config.data.get("context", 0), None)
  inputs.check_config(config)
  names = tuple(inputs.channel_names(config))
  expected = in_channels(config, inputs)
  given = config.model.get("in_channels")
  if given is not None and given != expected:  # a stored config of an earlier run holds it
    raise InputError("model.in_channels", f"is {given}, but "
                     f"{'x_t plus ' if objective.noisy_input else ''}the channels {names} "
                     f"make {expected} (leave it out: the task derives it)")
  sampling_config.check(config.sampling)
  if config.train.eval_every and config.train.num_sample_images % jax.device_count():
    raise InputError("train.num_sample_images", f"{config.train.num_sample_images} is not "
                     f"divisible by the {jax.device_count()} devices")


def make_predictor(config, net, mesh, inputs):
  """Jitted `(params, cond (B, H, W, C), key) -> prediction (B, H, W, 1)` of the objective."""
  predict = objective_of(config).predictor(config, net, inputs)
  repl, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(predict, in_shardings=(repl, batch, repl), out_shardings=batch)


class SliceTask:
  """`trainer.Task` for a 2D network on slices along `data.axis`, fed by a method's inputs."""

  def __init__(self, config, workdir, inputs):
    check_config(config, inputs)
    self.config, self.inputs = with_in_channels(config, inputs), inputs
    self.objective = objective_of(config)
    self.sources = inputs.sources(config, workdir)
    d = config.diffusion
    if self.objective.noisy_input and d.parameterization == "edm" and not d.sigma_data:
      d.sigma_data = measure_sigma_data(config, inputs, self.sources["train"])
      tqdm.tqdm.write(f"diffusion.sigma_data = {d.sigma_data:.4f}, measured from "
                      f"{SIGMA_DATA_BATCHES} training batches")
    self.schedule = schedules.schedule_from_config(d)
    self.mesh = sharding.make_mesh()
    self._predict = None  # built at the first evaluation

  def create_model(self, rngs, dtype):
    return models.create_model(self.config.model, dtype=dtype, rngs=rngs)

  def frozen_params(self, mesh):
    return None

  def train_iterator(self, batch_size_per_process):
    return self.inputs.train_batches(self.config, self.sources["train"], batch_size_per_process)

  def loss(self, model, batch, key, frozen):
    return self.objective.loss(self, model, batch, key), {}

  def evaluate(self, net, params, frozen, step, key, workdir):
    if self._predict is None:
      self._predict = make_predictor(self.config, net, self.mesh, self.inputs)
      self.sample_batch = self.inputs.eval_batch(self.config, self.sources["eval"])
    batch = self.sample_batch
    cond = jax.device_put(batch["cond"], sharding.batch_sharded(self.mesh))
    # every process takes part in the sharded prediction; process 0 scores and draws it
    prediction = multihost_utils.process_allgather(self._predict(params, cond, key), tiled=True)
    if jax.process_index():
      return {}
    return self.inputs.eval_scores(self.config, batch, prediction, step, workdir)


def train(config, workdir, inputs, *, stop_at_step=None):
  """Trains the slice model of `config` in `workdir` (resuming if it can)."""
  return trainer.train(SliceTask(config, workdir, inputs), config, workdir,
                       stop_at_step=stop_at_step)
