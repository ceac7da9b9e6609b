"""Training of the inpainting slice models: a task of the shared trainer.

The network maps (x_t, voided slice, mask slice) -> epsilon on 2D slices along
`data.axis` (as in the BraTS 2023 2nd-place DDPM); the loss is
`schedules.conditional_denoising_loss`. Batches come from the TFDS/grain slice
pipeline over `data.root` (or the embedded MNI152 subjects). Evaluation inpaints
`train.num_sample_images` held-out slices that meet the mask, spread evenly over the
eval cases, with
the EMA parameters and the configured sampler, writes
`samples/step_<n>.png` (voided | mask | inpainted | ground truth) and logs
`sample_mse_in_mask`, the mean squared error inside the mask on the [0, 1] scale.

  python main.py --config=configs/inpainting/axial.py --workdir=runs/axial
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import input_pipeline
from data_pipelines import sources as data_sources
from sciimg_jax.core import figures
from sciimg_jax.core import models
from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import known_region

# The conditioning channels of the slice models, in any order.
CONDITIONS = ("t1n-voided", "mask")


def check_config(config):
  """Raises InputError for settings the slice task cannot train with."""
  expected = 1 + len(config.data.conditions)
  if config.model.in_channels != expected:
    raise InputError("model.in_channels", f"is {config.model.in_channels}, but x_t plus "
                     f"{len(config.data.conditions)} conditions {tuple(config.data.conditions)} "
                     f"make {expected}")
  w = config.train.get("loss_weight_in_mask", 1.0)
  if w != 1.0 and "mask" not in config.data.conditions:
    raise InputError("train.loss_weight_in_mask", "needs 'mask' among data.conditions")
  if w <= 0:
    raise InputError("train.loss_weight_in_mask", f"must be > 0, got {w!r}")
  if config.diffusion.get("clip_x0", 1.0) < 0:
    raise InputError("diffusion.clip_x0", f"must be >= 0 (0 = no clipping), "
                     f"got {config.diffusion.clip_x0!r}")
  if config.train.eval_every:
    missing = [k for k in CONDITIONS if k not in config.data.conditions]
    if missing:
      raise InputError("data.conditions", f"inpainting needs {missing} among "
                       f"{tuple(config.data.conditions)}")
    if config.train.num_sample_images % jax.device_count():
      raise InputError("train.num_sample_images", f"{config.train.num_sample_images} is not "
                       f"divisible by the {jax.device_count()} devices")


def known_and_mask(conditions, cond):
  """The voided image and the mask, (B, ..., 1) each, from the condition channels."""
  v, m = list(conditions).index("t1n-voided"), list(conditions).index("mask")
  return cond[..., v:v + 1], cond[..., m:m + 1]


def make_slice_inpainter(config, net, mesh):
  """Jitted slice inpainting `(params, batch, key) -> x0` with the sampling schedule."""
  d = config.diffusion
  schedule = schedules.respace(schedules.schedule_from_config(d), d.sample_steps, d.spacing)

  def inpaint(params, batch, key):
    cond = batch["cond"]
    known, mask = known_and_mask(config.data.conditions, cond)
    x_init = jax.random.normal(jax.random.fold_in(key, 0), known.shape, known.dtype)
    model_fn = lambda x_t, t: net(params, jnp.concatenate([x_t, cond], axis=-1), t).astype(jnp.float32)
    x0 = sampler.sample(
        model_fn, schedule, x_init, jax.random.fold_in(key, 1), parameterization=d.parameterization,
        stepper=d.stepper, eta=d.eta, clip_x0=d.get("clip_x0", 1.0) or None,
        post_step_fn=known_region.known_region_replacement(schedule, known, mask))
    return mask * x0 + (1.0 - mask) * known

  repl = sharding.replicated(mesh)
  return jax.jit(inpaint, in_shardings=(repl, sharding.batch_sharded(mesh), repl),
                 out_shardings=sharding.batch_sharded(mesh))


def sample_indices(config, source, num=None):
  """`num` (default `train.num_sample_images`) records of `source`, evenly spread over those
  that meet the mask.

  (With `data.slices='brain'` most held-out slices have no mask; a curve of the error
  inside the mask needs ones that do.)
  """
  m = list(config.data.conditions).index("mask")
  with_mask = [i for i in range(len(source)) if np.any(source[i]["cond"][..., m] > 0)]
  if not with_mask:
    raise InputError("data.eval_root", "no held-out slice meets a mask; nothing to evaluate")
  num = config.train.num_sample_images if num is None else num
  return np.asarray(with_mask)[np.linspace(0, len(with_mask) - 1, num).round().astype(int)]


class SliceDiffusionTask:
  """`trainer.Task` for a 2D (x_t, conditions) -> epsilon model on slices of one axis."""

  def __init__(self, config, workdir):
    check_config(config)
    self.config = config
    self.schedule = schedules.schedule_from_config(config.diffusion)
    schedules.check_parameterization(config.diffusion.parameterization)
    workdir = pathlib.Path(workdir)
    splits = data_sources.source_dirs(config.data, workdir)
    self.sources = input_pipeline.slice_sources(
        config.data, splits, config.data.cache_dir or workdir / "data")
    self.mesh = sharding.make_mesh()
    self._inpaint = None  # built at the first evaluation

  def create_model(self, rngs, dtype):
    return models.create_model(self.config.model, dtype=dtype, rngs=rngs)

  def frozen_params(self, mesh):
    return None

  def train_iterator(self, batch_size_per_process):
    return input_pipeline.make_train_iterator(
        self.config.data, self.sources["train"], seed=self.config.seed,
        batch_size_per_process=batch_size_per_process)

  def loss(self, model, batch, key, frozen):
    """The denoising loss; unknown (mask) pixels weigh `train.loss_weight_in_mask` x the others."""
    weights = None
    w = self.config.train.get("loss_weight_in_mask", 1.0)
    if w != 1.0:
      _, mask = known_and_mask(self.config.data.conditions, batch["cond"])
      weights = 1.0 + (w - 1.0) * mask
    loss = schedules.conditional_denoising_loss(
        self.schedule, self.config.diffusion.parameterization, model, batch["target"],
        batch["cond"], key, weights)
    return loss, {}

  def evaluate(self, net, params, frozen, step, key, workdir):
    """Inpaints held-out slices, saves the figure and returns the error inside the mask."""
    c = self.config
    if self._inpaint is None:
      self._inpaint = make_slice_inpainter(c, net, self.mesh)
      self.sample_batch = input_pipeline.make_batch(c.data, self.sources["eval"],
                                                    sample_indices(c, self.sources["eval"]))
    batch = self.sample_batch
    result = np.asarray(jax.device_get(
        self._inpaint(params, sharding.shard_batch(batch, self.mesh), key)))
    voided, mask = known_and_mask(c.data.conditions, batch["cond"])
    target = batch["target"]
    figures.save_inpainting_grid(pathlib.Path(workdir) / "samples" / f"step_{step:07d}.png",
                                 voided=voided[..., 0], mask=mask[..., 0],
                                 result=result[..., 0], target=target[..., 0])
    err = ((result - target) / 2.0) ** 2 * mask  # on the [0, 1] scale
    return {"sample_mse_in_mask": float(err.sum() / max(mask.sum(), 1.0))}


def train_slice_model(config, workdir, *, stop_at_step=None):
  """The `inpaint_train` job: trains a slice model in `workdir` (resuming if it can)."""
  return trainer.train(SliceDiffusionTask(config, workdir), config, workdir,
                       stop_at_step=stop_at_step)
