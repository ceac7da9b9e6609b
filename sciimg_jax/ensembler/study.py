"""The Diff-Ensembler demonstration: train everything, then one table (job `ensembler_study`).

In `workdir`, for the configured task (`configs/ensembler/<task>.py`):

  <axis>/       the 2D diffusion model of every `study.directions` entry (`slice_inputs`)
  fusion/       the 3D fusion network over them (`fusion_task`)
  3d_only/      the released code's 3D_only baseline, a 3D model alone (`study.volume_model`)
  regressor/    the L1 U-Net baseline (`study.regressor`; translation tasks)
  segmenter/    the downstream tumour segmenter, on ground-truth FLAIR (`study.segmenter`)
  evaluation/   every method on the held-out subjects (`evaluate_job`): cases.csv,
                summary.json, NIfTI outputs, figures; the table is printed

`study.reuse_from` names another study's workdir whose finished runs listed in
`study.reuse` (2D models, 3d_only, regressor, segmenter, fusion) this study uses instead
of training its own: a study that changes only the fusion shares the rest.

A run that has finished (`reports.run_is_finished`: a checkpoint at its last step) is not
started again; one that was stopped resumes from its checkpoints, so a stopped study starts
where it stopped.
The sub-runs' configs are this config with their own blocks swapped in
(`study.fusion_model`, `study.fusion_steps`, ...).
"""

import copy
import pathlib

import tqdm

from data_pipelines import sources as data_sources
from sciimg_jax.core import atomic_files
from sciimg_jax.core import reports
from sciimg_jax.core.errors import InputError
from sciimg_jax.ensembler import evaluate_job
from sciimg_jax.ensembler import fusion_task
from sciimg_jax.ensembler import slice_inputs
from sciimg_jax.ensembler import volume_model


def _copy(config):
  c = copy.deepcopy(config)
  c.unlock()
  return c


def direction_config(config, axis):
  c = _copy(config)
  c.data.axis = axis
  return c


def fusion_config(config, member_dirs):
  s = config.study
  c = _copy(config)
  c.model = s.fusion_model
  c.train.num_steps = s.fusion_steps
  c.optim.learning_rate = s.fusion_learning_rate
  c.data.batch_size = s.fusion_batch_size
  c.fusion.members = tuple(str(d) for d in member_dirs)
  return c


def volume_config(config):
  """The 3D_only baseline: a 3D model of the fusion network's size, trained alone."""
  s = config.study
  c = _copy(config)
  c.model = _copy(s.fusion_model)
  c.model.out_channels = 1
  c.data.context = 0
  c.train.num_steps = s.volume_steps
  c.data.batch_size = s.fusion_batch_size
  return c


def regressor_config(config):
  c = _copy(config)
  c.train.objective = "regression"
  return c


def segmenter_config(config):
  c = _copy(config)
  c.train.objective = "segmentation"
  c.data.target, c.data.conditions, c.data.residual = "mask-unhealthy", ("t2f",), False
  c.data.context = 0  # one segmenter for every study, whatever its members see
  c.train.num_steps = config.study.segmenter_steps
  return c


def evaluate_config(config, fusion_dir, member_dirs, regressor, segmenter, volume=None):
  c = _copy(config)
  c.evaluate.members = tuple(str(d) for d in member_dirs)
  c.evaluate.fusion = str(fusion_dir)
  c.evaluate.regressor = str(regressor or "")
  c.evaluate.segmenter = str(segmenter or "")
  c.evaluate.volume_model = str(volume or "")
  methods = [m for m in c.evaluate.methods
             if (m != "regressor" or regressor) and (m != volume_model.NAME or volume)]
  c.evaluate.methods = tuple(methods)
  return c


def train(train_fn, config, workdir, what, reused=False):
  """Trains one run of the study, unless it has finished already; a `reused` run (from
  `study.reuse_from`) must have finished."""
  if reports.run_is_finished(workdir, config.train.num_steps):
    tqdm.tqdm.write(f"== {what}: finished already in {workdir}")
    return
  if reused:
    raise InputError("study.reuse_from", f"{workdir} has not finished its "
                     f"{config.train.num_steps} steps; run that study first, or drop "
                     f"{pathlib.Path(workdir).name!r} from study.reuse")
  tqdm.tqdm.write(f"== {what}")
  train_fn(config, workdir)


def is_reused(config, name):
  """True if the study's run `name` is taken from `study.reuse_from` (not trained here)."""
  s = config.study
  return bool(s.get("reuse_from")) and name in s.reuse


def run_dir(config, workdir, name):
  """Where the study's run `name` lives: under `study.reuse_from` if reused, else `workdir`."""
  root = config.study.reuse_from if is_reused(config, name) else workdir
  return pathlib.Path(root) / name


def run_study(config, workdir):
  workdir = pathlib.Path(workdir)
  config = _copy(config)
  # every run shares one copy of the data
  config.data.cache_dir = str(data_sources.cache_dir(config.data, workdir))
  atomic_files.write_json(workdir / "config.json", config.to_dict())
  s = config.study
  reused = lambda name: is_reused(config, name)
  place = lambda name: run_dir(config, workdir, name)
  member_dirs = []
  for axis in s.directions:
    member_dirs.append(place(axis))
    train(slice_inputs.train_slice_model, direction_config(config, axis), member_dirs[-1],
          f"2D {axis} model", reused(axis))
  train(fusion_task.train_fusion, fusion_config(config, member_dirs), place("fusion"),
        "3D fusion", reused("fusion"))
  volume = place(volume_model.NAME) if s.get("volume_model") else None
  if volume:
    train(volume_model.train_volume_model, volume_config(config), volume, "3D_only baseline",
          reused(volume_model.NAME))
  regressor = place("regressor") if s.regressor else None
  if regressor:
    train(slice_inputs.train_slice_model, regressor_config(config), regressor, "L1 regressor",
          reused("regressor"))
  segmenter = place("segmenter") if s.segmenter else None
  if segmenter:
    train(slice_inputs.train_slice_model, segmenter_config(config), segmenter,
          "downstream segmenter", reused("segmenter"))
  tqdm.tqdm.write("== evaluation")
  return evaluate_job.evaluate_folder(
      evaluate_config(config, place("fusion"), member_dirs, regressor, segmenter, volume),
      workdir / "evaluation")
