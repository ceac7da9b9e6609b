"""The released code's `3D_only` baseline: one 3D conditional diffusion model, no 2D models.

A 3D U-Net (`model.spatial_dims = 3`, the fusion network's size in the studies) sees
(x_t, the ensemble's condition channels: conditions, position, mask) on a 3D crop
(`fusion.crop_size`; () = the whole volume) and learns the target as any slice model does:
it is the core slice task (`core/slice_task.py`, objective `diffusion`) fed 3D examples by
`VolumeCrops` instead of slices, so it trains through the one trainer. At sampling it is
the combinator `3d_only` of the one volume sampler (`translator.VolumeTranslator`), read
as epsilon like every member (`members.make_member`).

  python main.py --config=configs/ensembler/volume_model.py:sr --workdir=runs/sr/3d_only
"""

import pathlib

import jax.numpy as jnp
import numpy as np

from data_pipelines import volume_cases
from sciimg_jax.core import figures
from sciimg_jax.core import slice_task
from sciimg_jax.core import trained_models
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import members as members_lib
from sciimg_jax.ensembler import slice_inputs

NAME = "3d_only"


class VolumeCrops(slice_inputs.VolumeSlices):
  """`slice_task.SliceInputs` of a 3D model: random crops (or whole volumes) of the cases."""

  def check_config(self, config):
    volume_cases.check_data_config(config.data)
    if config.model.get("spatial_dims", 2) != 3:
      raise InputError("model.spatial_dims", f"a volume model is 3D, got "
                       f"{config.model.get('spatial_dims')}")
    if config.data.get("context", 0):
      raise InputError("data.context", "a 3D model sees its neighbours already; set it to 0")
    if slice_task.objective_of(config).labels:
      raise InputError("train.objective", "the volume model learns an image")

  def channel_names(self, config):
    return volume_cases.channel_names(config.data)

  def sources(self, config, workdir):
    return {name: volume_cases.CropSource(cases, config.data)
            for name, cases in slice_inputs.prepared_splits(config, workdir).items()}

  def train_batches(self, config, source, batch_size):
    crop = volume_cases.RandomCrop(source, config.fusion.crop_size)
    return volume_cases.train_iterator(source, seed=config.seed, batch_size=batch_size,
                                       operations=[crop], num_workers=config.data.num_workers)

  def eval_batch(self, config, source):
    items = volume_cases.fixed_examples(source, config.fusion.crop_size,
                                        config.train.num_sample_images, config.seed)
    return {k: np.stack([e[k] for e in items]) for k in items[0]}

  def eval_scores(self, config, batch, prediction, step, workdir):
    cond, target = batch["cond"], batch["target"]
    image = slice_inputs.to_image(config, prediction, cond)
    truth = slice_inputs.to_image(config, target, cond)
    middle = lambda v: v[:, :, :, v.shape[3] // 2, 0]  # the middle axial slice of each crop
    figures.save_image_grid(pathlib.Path(workdir) / "samples" / f"step_{step:07d}.png",
                            {"condition": middle(cond), "prediction": middle(image),
                             "ground truth": middle(truth)})
    mse = np.mean(((image - truth) / 2.0) ** 2)
    return {"eval_psnr": float(-10.0 * np.log10(max(mse, 1e-12)))}


def train_volume_model(config, workdir, *, stop_at_step=None):
  """The `ensembler_volume` job: trains the 3D model in `workdir` (resuming if it can)."""
  return slice_task.train(config, workdir, VolumeCrops(), stop_at_step=stop_at_step)


def load_member(trained, data, chain_config):
  """The trained 3D model as a model of an ensemble's chain on `data` (read as epsilon)."""
  return members_lib.make_member(trained, data, chain_config, name=NAME)


def denoiser(model, params, cond):
  """The whole-volume denoiser (x_t (X, Y, Z), t) -> eps (X, Y, Z) of the 3D `model` on the
  case's channels `cond` (X, Y, Z, C)."""
  def denoise(x_t, t):
    t = jnp.ravel(jnp.asarray(t))[:1]
    return model.output(params, x_t[None, ..., None], cond[None], t, to="eps")[0, ..., 0]
  return denoise


def load(workdir, data, chain_config, mesh):
  """The trained 3D model of `workdir` as a model of the ensemble's chain on `data`."""
  def check(config):
    if config.model.get("spatial_dims", 2) != 3:
      raise InputError(workdir, "holds a 2D model, not the 3D model of the 3d_only baseline "
                       "(configs/ensembler/volume_model.py)")
    members_lib.check_member(config, data, workdir)

  trained = trained_models.load(workdir, mesh, check=check,
                                hint="train it there first (configs/ensembler/volume_model.py)")
  return load_member(trained, data, chain_config)
