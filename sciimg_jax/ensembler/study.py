"""The Diff-Ensembler demonstration: train everything, then one table (job `ensembler_study`).

In `workdir`, for the configured task (`configs/ensembler/<task>.py`):

  <axis>/       the 2D diffusion model of every `study.directions` entry (`slice_task`)
  fusion/       the 3D fusion network over them (`fusion_task`)
  regressor/    the L1 U-Net baseline (`study.regressor`; translation tasks)
  segmenter/    the downstream tumour segmenter, on ground-truth FLAIR (`study.segmenter`)
  evaluation/   every method on the held-out subjects (`translate_job`): cases.csv,
                summary.json, NIfTI outputs, figures; the table is printed

Every run resumes from its checkpoints, so a stopped study starts where it stopped.
The sub-runs' configs are this config with their own blocks swapped in
(`study.fusion_model`, `study.fusion_steps`, ...).
"""

import copy
import pathlib

import tqdm

from data_pipelines import volume_cases
from sciimg_jax.core import atomic_files
from sciimg_jax.ensembler import fusion_task
from sciimg_jax.ensembler import slice_task
from sciimg_jax.ensembler import translate_job


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
  c.data.batch_size = s.fusion_batch_size
  c.fusion.members = tuple(str(d) for d in member_dirs)
  return c


def regressor_config(config):
  c = _copy(config)
  c.train.objective = "regression"
  c.model.in_channels = len(volume_cases.channel_names(c.data))
  return c


def segmenter_config(config):
  c = _copy(config)
  c.train.objective = "segmentation"
  c.data.target, c.data.conditions, c.data.residual = "mask-unhealthy", ("t2f",), False
  c.model.in_channels = len(volume_cases.channel_names(c.data))
  c.train.num_steps = config.study.segmenter_steps
  return c


def translate_config(config, workdir, member_dirs, regressor, segmenter):
  c = _copy(config)
  c.translate.members = tuple(str(d) for d in member_dirs)
  c.translate.fusion = str(workdir / "fusion")
  c.translate.regressor = str(regressor or "")
  c.translate.segmenter = str(segmenter or "")
  methods = [m for m in c.translate.methods if m != "regressor" or regressor]
  c.translate.methods = tuple(methods)
  return c


def run_study(config, workdir):
  workdir = pathlib.Path(workdir)
  config = _copy(config)
  if not config.data.cache_dir:  # every run shares one copy of the data
    config.data.cache_dir = str(workdir / "data")
  atomic_files.write_json(workdir / "config.json", config.to_dict())
  s = config.study
  member_dirs = []
  for axis in s.directions:
    tqdm.tqdm.write(f"== 2D {axis} model")
    slice_task.train_slice_model(direction_config(config, axis), workdir / axis)
    member_dirs.append(workdir / axis)
  tqdm.tqdm.write("== 3D fusion")
  fusion_task.train_fusion(fusion_config(config, member_dirs), workdir / "fusion")
  regressor = segmenter = None
  if s.regressor:
    tqdm.tqdm.write("== L1 regressor baseline")
    regressor = workdir / "regressor"
    slice_task.train_slice_model(regressor_config(config), regressor)
  if s.segmenter:
    tqdm.tqdm.write("== downstream segmenter")
    segmenter = workdir / "segmenter"
    slice_task.train_slice_model(segmenter_config(config), segmenter)
  tqdm.tqdm.write("== evaluation")
  return translate_job.translate_folder(
      translate_config(config, workdir, member_dirs, regressor, segmenter),
      workdir / "evaluation")
