"""Pseudo-healthy 3D inpainting of BraTS-layout folders (or one image/mask pair).

Stage 1 (axial model, from noise) and stage 2 (coronal model, SDEdit from the
stage-1 volume at `sampling.stage2.t0`), with RePaint resampling (fixed or adaptive loop
counts); see sciimg_jax/inpainting/volume_inpainter.py.
Writes <output_dir>/<case>/<case>-t1n-inference.nii.gz with the input's affine.

  python main.py --config=configs/inpainting/inpaint.py --workdir=runs/infer \
      --config.inpaint.input_dir=/data/BraTS-inpainting/val \
      --config.pipeline.axial_workdir=runs/axial --config.pipeline.coronal_workdir=runs/coronal
  python main.py --config=configs/inpainting/inpaint.py --workdir=runs/one \
      --config.input=case-t1n-voided.nii.gz --config.mask=case-mask.nii.gz ...

Baselines: --config.pipeline.method=axial|coronal|tpdm|average, and the classical fills
biharmonic|harmonic (sciimg_jax/inpainting/classical.py); resampling:
--config.pipeline.resampling.mode=none|fixed|adaptive.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import base
from configs import diffusion
from configs.inpainting import common


def get_pipeline_config():
  p = ml_collections.ConfigDict()
  p.method = "hierarchical"         # hierarchical | axial | coronal | tpdm | average
                                    # | biharmonic | harmonic (classical fills, no model)
  p.refiner = "coronal"             # stage 2 of hierarchical: coronal (the paper) | tpdm
                                    # (axial and coronal alternating) | average | axial
  p.axial_workdir = "runs/axial"    # training runs whose latest checkpoints (EMA) are used
  p.coronal_workdir = "runs/coronal"
  p.resampling = ml_collections.ConfigDict(dict(
      mode="fixed",               # none | fixed | adaptive (docs/inpainting.md: what each buys)
      jump_length=1, max_loops=4, context_width=3, size_ratio=0.4, disagreement_scale=0.1))
  p.slice_restriction = True        # evaluate only slices that meet the dilated mask
  p.mask_dilation = 1
  p.classical_margin = 4            # classical fills: voxels around each hole's bounding box
  return p


def get_sampling_config():
  """The `sampling` block of the volume inpainter: stage 1 walks it as it is; stage 2
  (the coronal refinement) starts at t0 * T from the stage-1 volume (SDEdit) and may
  override `steps`, `stepper` and `eta` (unset: the block's)."""
  s = diffusion.sampling_block()
  s.stage2 = ml_collections.ConfigDict(dict(
      t0=0.5, steps=placeholder(int), stepper=placeholder(str), eta=placeholder(float)))
  return s


TINY = {
    "sampling.chunk_size": 8, "sampling.steps": 4,
    "pipeline.resampling.max_loops": 1, "inpaint.progress_bar": False,
}
VARIANTS = {"tiny": {**common.TINY, **TINY}}


def get_config(variant=""):
  c = common.get_base_config()
  c.job = "inpaint"
  c.input = ""                      # one voided T1 volume (instead of inpaint.input_dir)
  c.mask = ""                       # and its mask
  c.inpaint = ml_collections.ConfigDict(dict(
      input_dir="", output_dir="", figures=True, progress_bar=True,
      write_std=True,               # with num_samples > 1: <case>-t1n-inference-std.nii.gz
      write_sample=False))          # with num_samples > 1: sample 0 as <case>-t1n-sample.nii.gz
  c.pipeline = get_pipeline_config()
  c.sampling = get_sampling_config()
  return base.apply_variant(c, variant, VARIANTS)
