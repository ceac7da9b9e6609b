"""Per-direction 2D models of volume translation: a task of the shared trainer.

The network sees one slice along `data.axis`: the condition slice(s), the 3-channel
position of its voxels in the volume and the brain mask (`volume_cases.channel_names`),
and, for the diffusion objective, x_t first. `train.objective` picks what it learns
(`OBJECTIVES`):

  diffusion     epsilon (or x0 / v) of the target slice: the 2D models Diff-Ensembler
                fuses (`schedules.conditional_denoising_loss`);
  regression    the target slice itself with an L1 loss, t = 0: the deterministic U-Net
                baseline of the translation tables;
  segmentation  a 0/1 label slice (`data.target = 'mask-unhealthy'`) with binary cross
                entropy plus soft Dice: the downstream check's tumour segmenter.

Evaluation predicts `train.num_sample_images` held-out slices (spread evenly over the
held-out brain slices), writes `samples/step_<n>.png` and logs `eval_psnr` (images, on
the [0, 1] scale) or `eval_dice` (labels).

  python main.py --config=configs/ensembler/slice_model.py --workdir=runs/sr-axial
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from data_pipelines import brats_layout
from data_pipelines import sources as data_sources
from data_pipelines import volume_cases
from sciimg_jax.core import figures
from sciimg_jax.core import models
from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluation


def _diffusion_loss(task, model, batch, key):
  return schedules.conditional_denoising_loss(
      task.schedule, task.config.diffusion.parameterization, model, batch["target"],
      batch["cond"], key)


def _regression_loss(task, model, batch, key):
  out = model(batch["cond"], jnp.zeros((batch["cond"].shape[0],), jnp.int32))
  return jnp.mean(jnp.abs(out.astype(jnp.float32) - batch["target"]))


def soft_dice(probability, labels, eps=1.0):
  """1 - soft Dice over the batch (sum over every voxel), smoothed by `eps`."""
  inter = jnp.sum(probability * labels)
  return 1.0 - (2.0 * inter + eps) / (jnp.sum(probability) + jnp.sum(labels) + eps)


def _segmentation_loss(task, model, batch, key):
  logits = model(batch["cond"], jnp.zeros((batch["cond"].shape[0],), jnp.int32))
  logits = logits.astype(jnp.float32)
  bce = optax.sigmoid_binary_cross_entropy(logits, batch["target"]).mean()
  return bce + soft_dice(jax.nn.sigmoid(logits), batch["target"])


# objective -> (loss(task, model, batch, key), whether x_t is an input)
OBJECTIVES = {
    "diffusion": (_diffusion_loss, True),
    "regression": (_regression_loss, False),
    "segmentation": (_segmentation_loss, False),
}


def takes_noisy_input(config):
  return OBJECTIVES[config.train.objective][1]


def check_config(config):
  """Stops on an objective, channel count or target the task cannot train with."""
  objective = config.train.get("objective", "")
  if objective not in OBJECTIVES:
    raise InputError("train.objective", f"unknown objective {objective!r}; known: "
                     f"{', '.join(OBJECTIVES)}")
  volume_cases.check_data_config(config.data)
  expected = takes_noisy_input(config) + len(volume_cases.channel_names(config.data))
  if config.model.in_channels != expected:
    raise InputError("model.in_channels", f"is {config.model.in_channels}, but "
                     f"{'x_t plus ' if takes_noisy_input(config) else ''}the channels "
                     f"{volume_cases.channel_names(config.data)} make {expected}")
  is_label = config.data.target in brats_layout.MASK_KEYS
  if is_label != (objective == "segmentation"):
    raise InputError("data.target", f"{config.data.target!r} does not suit objective "
                     f"{objective!r} (segmentation learns a mask key, the others an image)")
  if config.train.eval_every and config.train.num_sample_images % jax.device_count():
    raise InputError("train.num_sample_images", f"{config.train.num_sample_images} is not "
                     f"divisible by the {jax.device_count()} devices")


def prepared_splits(config, workdir):
  """{'train': [PreparedCase], 'eval': [...]} of `config.data` (embedded data if no root)."""
  workdir = pathlib.Path(workdir)
  cache = pathlib.Path(config.data.cache_dir or workdir / "data")
  splits = data_sources.source_dirs(config.data, workdir)
  return {name: volume_cases.prepare(root, config.data, cache, split=name)
          for name, root in splits.items()}


def to_image(config, prediction, cond):
  """A prediction in the target's [-1, 1] space (undoing the residual); labels unchanged."""
  return volume_cases.image_of(config.data, prediction, cond[..., :1])


def make_predictor(config, net, mesh):
  """Jitted `(params, cond (B, H, W, C), key) -> prediction (B, H, W, 1)` of the objective."""
  d = config.diffusion
  schedule = schedules.respace(schedules.schedule_from_config(d), d.sample_steps, d.spacing)
  objective = config.train.objective

  def predict(params, cond, key):
    if objective == "diffusion":
      x_init = jax.random.normal(jax.random.fold_in(key, 0), cond.shape[:-1] + (1,))
      model_fn = lambda x, t: net(params, jnp.concatenate([x, cond], -1), t).astype(jnp.float32)
      return sampler.sample(model_fn, schedule, x_init, jax.random.fold_in(key, 1),
                            parameterization=d.parameterization, stepper=d.stepper, eta=d.eta,
                            clip_x0=d.get("clip_x0", 1.0) or None)
    out = net(params, cond, jnp.zeros((cond.shape[0],), jnp.int32)).astype(jnp.float32)
    return jax.nn.sigmoid(out) if objective == "segmentation" else out

  repl, batch = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(predict, in_shardings=(repl, batch, repl), out_shardings=batch)


class SliceTask:
  """`trainer.Task` for a 2D network on slices of prepared volumes along `data.axis`."""

  def __init__(self, config, workdir):
    check_config(config)
    self.config = config
    self.schedule = schedules.schedule_from_config(config.diffusion)
    schedules.check_parameterization(config.diffusion.parameterization)
    splits = prepared_splits(config, workdir)
    self.sources = {name: volume_cases.SliceSource(cases, config.data, config.data.axis)
                    for name, cases in splits.items()}
    self.mesh = sharding.make_mesh()
    self._predict = None

  def create_model(self, rngs, dtype):
    return models.create_model(self.config.model, dtype=dtype, rngs=rngs)

  def frozen_params(self, mesh):
    return None

  def train_iterator(self, batch_size_per_process):
    return volume_cases.train_iterator(
        self.sources["train"], seed=self.config.seed, batch_size=batch_size_per_process,
        num_workers=self.config.data.num_workers)

  def loss(self, model, batch, key, frozen):
    return OBJECTIVES[self.config.train.objective][0](self, model, batch, key), {}

  def evaluate(self, net, params, frozen, step, key, workdir):
    c, source = self.config, self.sources["eval"]
    if self._predict is None:
      self._predict = make_predictor(c, net, self.mesh)
      picks = np.linspace(0, len(source) - 1, c.train.num_sample_images).round().astype(int)
      items = [source[int(i)] for i in picks]
      self.sample_batch = {k: np.stack([e[k] for e in items]) for k in items[0]}
    cond, target = self.sample_batch["cond"], self.sample_batch["target"]
    out = np.asarray(jax.device_get(self._predict(params, jax.device_put(
        cond, sharding.batch_sharded(self.mesh)), key)))
    columns = {"condition": cond[..., 0], "prediction": to_image(c, out, cond)[..., 0],
               "ground truth": to_image(c, target, cond)[..., 0]}
    if c.train.objective == "segmentation":
      figures.save_image_grid(pathlib.Path(workdir) / "samples" / f"step_{step:07d}.png",
                              columns, {"prediction": (0, 1), "ground truth": (0, 1)})
      return {"eval_dice": evaluation.dice(out, target)}
    figures.save_image_grid(pathlib.Path(workdir) / "samples" / f"step_{step:07d}.png", columns)
    mse = np.mean(((to_image(c, out, cond) - to_image(c, target, cond)) / 2.0) ** 2)
    return {"eval_psnr": float(-10.0 * np.log10(max(mse, 1e-12)))}


def train_slice_model(config, workdir, *, stop_at_step=None):
  """The `ensembler_train` job: trains a 2D model in `workdir` (resuming if it can)."""
  return trainer.train(SliceTask(config, workdir), config, workdir, stop_at_step=stop_at_step)
