"""Settings every Diff-Ensembler config shares: the three tasks and the tiny variant.

Tasks (`TASKS`, a config variant each), all learning FLAIR (`t2f`):
  sr             4x super-resolution: FLAIR average-pooled by 4 along every axis and
                 repeated back ('t2f:pool4') -> FLAIR, residual target (target - input) / 2
  t1_to_flair    translation T1 -> FLAIR
  t1t2_to_flair  multi-condition translation (T1, T2) -> FLAIR

The defaults suit the embedded 4 mm data (volumes 50x59x48, put on a 48x56x48 grid); real
BraTS volumes (240x240x155) take `data.volume_shape=(192,192,152)`, the paper's grid.
"""

import ml_collections

from configs import base
from configs import diffusion

TASKS = {
    "sr": dict(target="t2f", conditions=("t2f:pool4",), residual=True),
    "t1_to_flair": dict(target="t2f", conditions=("t1n",), residual=False),
    "t1t2_to_flair": dict(target="t2f", conditions=("t1n", "t2w"), residual=False),
}

# Seconds-scale settings for tests: 3 training and 2 held-out subjects, a 24x32x24 grid.
TINY = dict(diffusion.TINY, **{
    "data.volume_shape": (24, 32, 24), "data.batch_size": 4,
    "fusion.crop_size": (16, 16, 16), "sampling.steps": 3, "sampling.chunk_size": 8,
    "model.attention_levels": (False, False),  # less to compile
    # The 4 mm brains (up to 36x44x41 voxels) do not fit this grid: crop them, and say so.
    "data.crop_brain": True,
})


def get_base_config(task="sr"):
  """`configs/diffusion.py`'s config with the ensembler's data, sampling and fusion blocks
  for `task`."""
  c = diffusion.get_base_config()
  t = TASKS[task]
  c.data.target = t["target"]
  c.data.conditions = t["conditions"]
  c.data.residual = t["residual"]  # learn (target - the first condition) / 2
  c.data.volume_shape = (48, 56, 48)
  # A brain voxel outside the centre crop to volume_shape stops the job (False), or is
  # cropped away with a warning per case (True; the tiny test variant).
  c.data.crop_brain = False
  c.data.synthetic.num_train = 24
  c.data.synthetic.num_eval = 8
  c.data.batch_size = 16
  c.train.objective = "diffusion"

  c.fusion = ml_collections.ConfigDict(dict(
      members=(),                # workdirs of the trained 2D models
      crop_size=(32, 32, 32),    # random 3D training crops
      l1_weight=5.0, l2_weight=150.0,
      residual_scale=1.0,        # lambda of the fusion's residual
      variant="eps",             # eps | features (2D decoder features into the 3D encoder)
      space="eps",               # eps (as released) | x0: fuse the members' x0 estimates
      min_snr_gamma=0.0,         # > 0: min-SNR weighting of the epsilon loss (0: as released)
      loss_on="eps",             # eps (as released) | x0: the loss on the fused x0
      rollout_fraction=0.0,      # share of batches drawn from the members' own walk
      init_from="",              # a trained fusion workdir whose parameters start training
  ))
  # SR: avgpool(sample) equals the low-resolution input
  c.sampling = diffusion.sampling_block(data_consistency=True)
  return c


def evaluate_block():
  """The `evaluate` block of the evaluation job (configs/ensembler/evaluate.py) and the studies."""
  return ml_collections.ConfigDict(dict(
      members=(),          # workdirs of the trained 2D models
      fusion="",           # workdir of the trained fusion ('' = no 'fused' method)
      regressor="",        # workdir of a trained L1 regressor ('' = none)
      volume_model="",     # workdir of the 3D model of the '3d_only' baseline ('' = none)
      segmenter="",        # workdir of the downstream segmenter ('' = no Dice column)
      methods=("cubic", "axial", "coronal", "sagittal", "tpdm", "average", "fused"),
      input_root="",       # BraTS-layout folder; '' = the held-out split of `data`
      num_cases=0,         # 0 = every case
      progress_bar=True,
  ))


def variants():
  """`sr`, `t1_to_flair`, `t1t2_to_flair` (applied by `task_config`) and `tiny`."""
  return {"tiny": TINY, **{name: {} for name in TASKS}}


def task_of(variant):
  names = [v for v in variant.split("+") if v in TASKS]
  if len(names) > 1:
    raise ValueError(f"variant {variant!r} names more than one task: {names}")
  return names[0] if names else "sr"


def study_config(task, variant, *, regressor):
  """The demonstration job of `task`: trains the 2D models, the fusion, the baselines and the
  segmenter, then evaluates every method (`sciimg_jax/ensembler/study.py`)."""
  c = get_base_config(task)
  c.job = "ensembler_study"
  # Sized for a CPU (minutes per model), with the slice-model recipe the inpainting study
  # found (docs/inpainting.md, "Training recipe"): x0 parameterisation, learning rate 1e-3, EMA 0.99.
  c.model.channels = (16, 32, 64)
  c.model.num_res_blocks = 1
  c.model.attention_levels = (False, False, True)
  c.model.num_head_channels = 16
  c.diffusion.parameterization = "x0"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 50
  c.optim.ema_decay = 0.99
  c.data.batch_size = 8
  c.train.num_steps = 600
  c.train.log_every = 50
  c.train.checkpoint_every = 300
  c.train.eval_every = 300
  c.train.num_sample_images = 8
  c.sampling.steps = 10
  c.evaluate = evaluate_block()
  c.evaluate.methods = c.evaluate.methods[:-1] + ("3d_only", "fused")
  if not regressor:
    c.evaluate.methods = tuple(m for m in c.evaluate.methods if m != "regressor")
  else:
    c.evaluate.methods = tuple(m if m != "cubic" else "regressor" for m in c.evaluate.methods)
  c.study = ml_collections.ConfigDict(dict(
      directions=("axial", "coronal", "sagittal"), regressor=regressor, segmenter=True,
      fusion_model=ml_collections.ConfigDict(dict(
          name="unet", spatial_dims=3, out_channels=0, channels=(8, 16, 32),
          num_res_blocks=1, attention_levels=(False, False, False), num_head_channels=16,
          num_groups=8, dropout=0.0)),
      fusion_steps=300, fusion_batch_size=2, segmenter_steps=600,
      # the released code's 3D_only baseline: a 3D diffusion model of the fusion network's
      # size trained alone (on fusion.crop_size crops), method '3d_only'
      volume_model=True, volume_steps=600,
      # another study's workdir whose finished runs named in `reuse` this one uses
      reuse_from="", reuse=("axial", "coronal", "sagittal", "3d_only", "regressor",
                            "segmenter"),
      # With the unweighted epsilon loss the 2D models' 1e-3 made the fusion diverge within
      # 100 steps (its epsilon error went from 0.005 to 1.7), and 1e-4 for 150 steps left
      # it at the average (SR) or below it (T1 -> FLAIR); see docs/diff_ensembler.md, "Studies".
      fusion_learning_rate=3e-4))
  # 3D convolutions are slow on CPUs: the study's fusion trains on 24^3 crops.
  c.fusion.crop_size = (24, 24, 24)
  # The 2D models predict x0: min-SNR weighting keeps the few low-noise crops, where their
  # epsilon errors are up to 100x their x0 errors, from dominating the fusion's loss.
  c.fusion.min_snr_gamma = 1.0
  tiny = dict(TINY, **{
      "study.fusion_model.channels": (8, 16), "study.fusion_model.num_groups": 4,
      "study.fusion_model.attention_levels": (False, False), "study.fusion_steps": 4,
      "study.fusion_batch_size": 4, "study.segmenter_steps": 4, "train.num_sample_images": 4,
      "study.volume_steps": 4,
      "model.channels": (8, 16), "model.attention_levels": (False, False),
      "model.num_head_channels": 8, "model.num_groups": 4,
  })
  return base.apply_variant(c, variant, {"tiny": tiny})
