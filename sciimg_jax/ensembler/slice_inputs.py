"""What Diff-Ensembler's per-direction 2D models see: the method's inputs to the core slice task.

The network sees one slice along `data.axis` of a prepared volume (`volume_cases`): the
condition slice(s), the 3-channel position of its voxels in the volume and the brain
mask (`volume_cases.channel_names`), and, for the diffusion objective, x_t first.
`train.objective` (`slice_task.OBJECTIVES`) picks what it learns:

  diffusion     the 2D models Diff-Ensembler fuses;
  regression    the deterministic L1 U-Net baseline of the translation tables;
  segmentation  a 0/1 label slice (`data.target = 'mask-unhealthy'`): the downstream
                check's tumour segmenter.

Evaluation predicts `train.num_sample_images` held-out slices (spread evenly over the
held-out brain slices), writes `samples/step_<n>.png` and logs `eval_psnr` (images, on
the [0, 1] scale) or `eval_dice` (labels).

  python main.py --config=configs/ensembler/slice_model.py --workdir=runs/sr-axial
"""

import pathlib

import numpy as np

from data_pipelines import brats_layout
from data_pipelines import sources as data_sources
from data_pipelines import volume_cases
from sciimg_jax.core import figures
from sciimg_jax.core import slice_context
from sciimg_jax.core import volumes
from sciimg_jax.core import slice_task
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluation


def prepared_splits(config, workdir):
  """{'train': [PreparedCase], 'eval': [...]} of `config.data` (embedded data if no root)."""
  workdir = pathlib.Path(workdir)
  cache = data_sources.cache_dir(config.data, workdir)
  splits = data_sources.source_dirs(config.data, workdir)
  return {name: volume_cases.prepare(root, config.data, cache, split=name)
          for name, root in splits.items()}


def to_image(config, prediction, cond):
  """A prediction in the target's [-1, 1] space (undoing the residual); labels unchanged."""
  return volume_cases.image_of(config.data, prediction, cond[..., :1])


class VolumeSlices:
  """`slice_task.SliceInputs` of the ensembler's 2D models: slices of prepared volumes."""

  def check_config(self, config):
    """Stops on a target or data setting the objective cannot train with."""
    learns_labels = slice_task.objective_of(config).labels
    volume_cases.check_data_config(config.data)
    slice_context.check(config.data.get("context", 0),
                        tuple(config.data.volume_shape)[volumes.AXES[config.data.axis]])
    if (config.data.target in brats_layout.MASK_KEYS) != learns_labels:
      raise InputError("data.target", f"{config.data.target!r} does not suit objective "
                       f"{config.train.objective!r} (segmentation learns a mask key, the "
                       "others an image)")

  def channel_names(self, config):
    return volume_cases.slice_channel_names(config.data)

  def sources(self, config, workdir):
    return {name: volume_cases.SliceSource(cases, config.data, config.data.axis)
            for name, cases in prepared_splits(config, workdir).items()}

  def train_batches(self, config, source, batch_size):
    return volume_cases.train_iterator(source, seed=config.seed, batch_size=batch_size,
                                       num_workers=config.data.num_workers)

  def loss_weights(self, config, batch):
    return None

  def generated(self, config, batch):
    return None

  def eval_batch(self, config, source):
    picks = np.linspace(0, len(source) - 1, config.train.num_sample_images).round().astype(int)
    items = [source[int(i)] for i in picks]
    return {k: np.stack([e[k] for e in items]) for k in items[0]}

  def constraint(self, config, cond, schedule):
    return None, lambda x0: x0

  def chain_clip(self, config, clip):
    return clip

  def eval_scores(self, config, batch, prediction, step, workdir):
    cond, target = batch["cond"], batch["target"]
    path = pathlib.Path(workdir) / "samples" / f"step_{step:07d}.png"
    image, truth = to_image(config, prediction, cond), to_image(config, target, cond)
    columns = {"condition": cond[..., 0], "prediction": image[..., 0],
               "ground truth": truth[..., 0]}
    if slice_task.objective_of(config).labels:
      figures.save_image_grid(path, columns, {"prediction": (0, 1), "ground truth": (0, 1)})
      return {"eval_dice": evaluation.dice(prediction, target)}
    figures.save_image_grid(path, columns)
    mse = np.mean(((image - truth) / 2.0) ** 2)
    return {"eval_psnr": float(-10.0 * np.log10(max(mse, 1e-12)))}


def train_slice_model(config, workdir, *, stop_at_step=None):
  """The `ensembler_train` job: trains a 2D model in `workdir` (resuming if it can)."""
  return slice_task.train(config, workdir, VolumeSlices(), stop_at_step=stop_at_step)
