"""What the inpainting slice models see: the method's inputs to the core slice task.

The network maps (x_t, voided slice, mask slice) -> epsilon (or x0 / v) on 2D slices along
`data.axis` (as in the BraTS 2023 2nd-place DDPM); training runs the core
`slice_task.SliceTask` on batches of the TFDS/grain slice pipeline over `data.root` (or
the embedded MNI152 subjects), with random lesion-shaped holes (`data.random_masks`) and
the unknown pixels weighted `train.loss_weight_in_mask` x the others in the loss.
Evaluation inpaints `train.num_sample_images` held-out slices that meet the mask, spread
evenly over the eval cases, with the EMA parameters, the `sampling` walk and the known
region replaced at every step; it writes `samples/step_<n>.png` (voided | mask |
inpainted | ground truth) and logs `sample_mse_in_mask`, the mean squared error inside
the mask on the [0, 1] scale.

Where the slices come from is `data.source` (`SOURCES`): 'slices', the TFDS slice dataset
(one slice, 2D holes), or 'volumes', slices of whole prepared volumes
(`training_volumes`: 3D holes, the through-plane context `data.context`, the classical
prior `data.prior` and the residual target `data.residual`).

  python main.py --config=configs/inpainting/axial.py --workdir=runs/axial
"""

import pathlib

import numpy as np

from data_pipelines import brats_layout
from data_pipelines import input_pipeline
from data_pipelines import mask_families
from data_pipelines import sources as data_sources
from sciimg_jax.core import figures
from sciimg_jax.core import slice_context
from sciimg_jax.core import slice_task
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import chain_space
from sciimg_jax.inpainting import classical
from sciimg_jax.inpainting import known_region
from sciimg_jax.inpainting import training_volumes
from sciimg_jax.inpainting.known_region import CONDITIONS


def known_and_mask(conditions, cond):
  """The voided image and the mask, (B, ..., 1) each, from the condition channels."""
  v, m = list(conditions).index("t1n-voided"), list(conditions).index("mask")
  return cond[..., v:v + 1], cond[..., m:m + 1]


def sample_indices(config, source, num=None):
  """`num` (default `train.num_sample_images`) records of `source`, evenly spread over those
  that meet the mask.

  (With `data.slices='brain'` most held-out slices have no mask; a curve of the error
  inside the mask needs ones that do.)
  """
  m = list(config.data.conditions).index("mask")
  with_mask = [i for i in range(len(source)) if np.any(source[i]["cond"][..., m] > 0)]
  return spread_over(with_mask, config.train.num_sample_images if num is None else num)


def spread_over(records, num):
  """`num` of `records` (those that meet the mask), evenly spread; stops if there are none."""
  if not records:
    raise InputError("data.eval_root", "no held-out slice meets a mask; nothing to evaluate")
  return np.asarray(records)[np.linspace(0, len(records) - 1, num).round().astype(int)]


def save_inpainting_grid(path, *, voided, mask, result, target=None):
  """One row per slice: voided input | mask | inpainted | ground truth (if given).

  Images are (N, H, W) in [-1, 1]; masks (N, H, W) in {0, 1}.
  """
  columns = {"voided": voided, "mask": mask, "inpainted": result}
  if target is not None:
    columns["ground truth"] = target
  return figures.save_image_grid(path, columns, {"mask": (0.0, 1.0)})


def prior_of(config, cond):
  """The prior channel of condition channels `cond` (it follows `data.conditions`)."""
  p = len(config.data.conditions)
  return cond[..., p:p + 1]


def to_image(config, x, cond):
  """A prediction or target in the image space: s x + prior with `data.residual`, else x."""
  return (chain_space.from_residual(x, prior_of(config, cond),
                                    chain_space.residual_scale(config.data))
          if config.data.get("residual") else x)


class _TfdsSlices:
  """The TFDS slice dataset (`brats_slices`): one slice, 2D random holes."""

  def sources(self, config, splits, cache):
    return input_pipeline.slice_sources(config.data, splits, cache)

  def train_batches(self, config, source, batch_size):
    return input_pipeline.make_train_iterator(config.data, source, seed=config.seed,
                                              batch_size_per_process=batch_size)

  def eval_batch(self, config, source):
    return input_pipeline.make_batch(config.data, source, sample_indices(config, source))


class _VolumeSlabs:
  """Slices of whole prepared volumes (`training_volumes`): 3D holes, context, prior."""

  def sources(self, config, splits, cache):
    return training_volumes.sources(config.data, splits, cache)

  def train_batches(self, config, source, batch_size):
    return training_volumes.train_iterator(config.data, source, seed=config.seed,
                                           batch_size=batch_size)

  def eval_batch(self, config, source):
    return training_volumes.batch(
        source, spread_over(source.with_mask(), config.train.num_sample_images))


SOURCES = {"slices": _TfdsSlices(), "volumes": _VolumeSlabs()}


def check_data_config(data):
  """Stops on a `data.source`, context, prior or residual setting that cannot work."""
  source = data.get("source", "slices")
  if source not in SOURCES:
    raise InputError("data.source", f"unknown source {source!r}; known: {', '.join(SOURCES)}")
  slice_context.check(data.get("context", 0), None)
  prior, residual = data.get("prior", ""), bool(data.get("residual", False))
  if prior and prior not in classical.FILLS:
    raise InputError("data.prior", f"unknown fill {prior!r}; known: {', '.join(classical.FILLS)}")
  if residual and not prior:
    raise InputError("data.residual", "a residual target (target - prior) / s needs data.prior")
  if not chain_space.residual_scale(data) > 0:
    raise InputError("data.residual_scale", f"must be > 0, got {data.residual_scale!r}")
  families = mask_families.check_families(mask_families.of(data.random_masks))
  if source == "slices":
    for key, on in (("context", data.get("context", 0)), ("prior", prior),
                    ("loss_exclude", data.get("loss_exclude", "")),
                    ("random_masks.families", families != mask_families.DEFAULT)):
      if on:
        raise InputError(f"data.{key}", "needs data.source = 'volumes' (the TFDS slice "
                         "dataset holds one slice and no prior)")
  else:
    if sorted(data.conditions) != sorted(CONDITIONS):
      raise InputError("data.conditions", f"data.source 'volumes' serves {list(CONDITIONS)}, "
                       f"not {list(data.conditions)}")
    if data.random_masks.probability:
      input_pipeline.check_random_masks(data)
  exclude = data.get("loss_exclude", "")
  if exclude and exclude not in brats_layout.MASK_KEYS:
    raise InputError("data.loss_exclude", f"{exclude!r} is not a mask key; known: "
                     f"{', '.join(brats_layout.MASK_KEYS)}")
  dropout = data.get("prior_dropout", 0.0)
  if not 0.0 <= dropout < 1.0 or (dropout and not prior):
    raise InputError("data.prior_dropout", f"must be in [0, 1) and needs data.prior, got "
                     f"{dropout!r} with data.prior {prior!r}")
  if prior and int(data.get("prior_margin", 0)) < 1:
    raise InputError("data.prior_margin", f"must be >= 1, got {data.get('prior_margin')!r}")


class InpaintingSlices:
  """`slice_task.SliceInputs` of the inpainting slice models."""

  def check_config(self, config):
    if config.train.get("objective", "diffusion") != "diffusion":
      raise InputError("train.objective", "inpainting slice models learn 'diffusion'")
    check_data_config(config.data)
    w = config.train.get("loss_weight_in_mask", 1.0)
    if w != 1.0 and "mask" not in config.data.conditions:
      raise InputError("train.loss_weight_in_mask", "needs 'mask' among data.conditions")
    if w <= 0:
      raise InputError("train.loss_weight_in_mask", f"must be > 0, got {w!r}")
    if config.train.eval_every:
      missing = [k for k in CONDITIONS if k not in config.data.conditions]
      if missing:
        raise InputError("data.conditions", f"inpainting needs {missing} among "
                         f"{tuple(config.data.conditions)}")

  def channel_names(self, config):
    return chain_space.channel_names(config.data)

  def source(self, config):
    return SOURCES[config.data.get("source", "slices")]

  def sources(self, config, workdir):
    workdir = pathlib.Path(workdir)
    splits = data_sources.source_dirs(config.data, workdir)
    return self.source(config).sources(config, splits,
                                       data_sources.cache_dir(config.data, workdir))

  def train_batches(self, config, source, batch_size):
    return self.source(config).train_batches(config, source, batch_size)

  def loss_weights(self, config, batch):
    """Unknown (mask) pixels weigh `train.loss_weight_in_mask` x the others, and the
    pixels left out of the loss (`data.loss_exclude`) 0; None if all weigh 1."""
    w = config.train.get("loss_weight_in_mask", 1.0)
    _, mask = known_and_mask(config.data.conditions, batch["cond"])
    weights = None if w == 1.0 else 1.0 + (w - 1.0) * mask
    if config.data.get("loss_exclude"):
      weights = batch["scored"] if weights is None else weights * batch["scored"]
    return weights

  def generated(self, config, batch):
    """The unknown (mask) pixels, less those left out of the loss (`data.loss_exclude`)."""
    _, mask = known_and_mask(config.data.conditions, batch["cond"])
    return mask * batch["scored"] if config.data.get("loss_exclude") else mask

  def eval_batch(self, config, source):
    return self.source(config).eval_batch(config, source)

  def constraint(self, config, cond, schedule):
    """The known region replaced at every step, and the known pixels put back at the end
    (in the image space: with a residual target, 2 x0 + prior)."""
    known, mask = known_and_mask(config.data.conditions, cond)
    chain_known = known
    if config.data.get("residual"):
      chain_known = chain_space.to_residual(  # 0 outside the mask
          known, prior_of(config, cond), chain_space.residual_scale(config.data))
    finish = lambda x0: mask * to_image(config, x0, cond) + (1.0 - mask) * known
    return known_region.known_region_replacement(schedule, chain_known, mask), finish

  def chain_clip(self, config, clip):
    return chain_space.chain_clip(config.data, clip)

  def eval_scores(self, config, batch, prediction, step, workdir):
    """Saves the figure and returns the error inside the mask."""
    voided, mask = known_and_mask(config.data.conditions, batch["cond"])
    target = to_image(config, batch["target"], batch["cond"])
    save_inpainting_grid(pathlib.Path(workdir) / "samples" / f"step_{step:07d}.png",
                         voided=voided[..., 0], mask=mask[..., 0],
                         result=prediction[..., 0], target=target[..., 0])
    mask = mask * batch.get("scored", 1.0)  # the healthy part of the mask
    err = ((prediction - target) / 2.0) ** 2 * mask  # on the [0, 1] scale
    return {"sample_mse_in_mask": float(err.sum() / max(mask.sum(), 1.0))}


def train_slice_model(config, workdir, *, stop_at_step=None):
  """The `inpaint_train` job: trains a slice model in `workdir` (resuming if it can)."""
  return slice_task.train(config, workdir, InpaintingSlices(), stop_at_step=stop_at_step)
