"""The inpainting study (job `inpaint_study`): the quickstart's steps at the study's size.

128 training subjects (an x0 model over-fits 24 within 1000 steps), 1000 training steps per
slice model, 8 held-out subjects, every method as one sample and as the mean of 4 (the
paper's comparisons first), 25 sampling steps; the table of docs/inpainting.md.

Variants change one lever of the slice models at a time (docs/inpainting.md, "Levers"):

  volumes   slices of whole volumes with 3D holes (`data.source = 'volumes'`), nothing else
  context   + the voided image and mask of 2 slices on each side (2.5D)
  prior     + the 3D biharmonic fill of the voided volume as a channel
  residual  + the prior, and the target (t1n - prior) / 2 (an untrained model returns the fill)
  healthy   the tumour (mask-unhealthy) left out of the loss: the model learns healthy tissue
  short     only the biharmonic fill, axial and hierarchical (without resampling: one sample
            and the mean of 4; fixed resampling: one sample)
  best      the best combination (context, prior, residual, healthy)
  scaled    + the residual, divided by 0.5 instead of 2 (`data.residual_scale`)
  edm       realism: the edm preconditioning with sigma_data measured from the training
            targets (`diffusion.sigma_data = 0`), so c_skip is the residual's Wiener gain
  lognormal realism: training noise levels drawn log-normally around sigma_data
            (`diffusion.noise_levels`), not uniformly over t (4 % below sigma 0.14)
  karras    realism: sampling steps at the karras noise levels (most where the noise is
            small, down to the chain's first index; `sampling.spacing = 'karras'`)
  priordrop realism: the prior (biharmonic) dropped (shown as the voided image) in 30 % of the
            training examples (`data.prior_dropout`), so the models also generate without it
  realism   the compared rows of the realism levers: mean of 4 and one sample of each model
  tpdm      sampling: stage 2 alternates the axial and coronal models (`pipeline.refiner`)
  band      sampling: fresh noise (eta 1) at the steps whose noise level lies in
            [0.05, 1.0] (`sampling.eta_band`), where the residual's detail (sigma_data
            0.22) is made; deterministic above and below
  families  training holes drawn from the lesion, ellipsoid and blob families
            (`data.random_masks.families`); the study's unseen family, box, stays out

Every comparison is repeated on the held-out subjects with new healthy masks of the
`box` family (`compare_families`): axis-aligned boxes, a shape no variant trains on.

  python main.py --config=configs/inpainting/study.py --workdir=runs/inpaint_study
  python main.py --config=configs/inpainting/study.py:residual --workdir=runs/study-residual
  python main.py --config=configs/inpainting/study.py:context+prior --workdir=runs/study-cp
"""

from configs import base
from configs import quickstart

# The study starts from the recipe before the levers (x0 on the TFDS slices, 2D holes):
# every lever is one change against it.
BEFORE_LEVERS = {"data.source": "slices", "data.context": 0, "data.prior": "",
                 "data.residual": False, "data.loss_exclude": ""}
SLICE_MODEL = {**BEFORE_LEVERS, "data.synthetic.num_train": 128, "train.num_steps": 1000,
               "optim.warmup_steps": 100, "train.eval_every": 250,
               "train.checkpoint_every": 500, "train.num_sample_images": 32,
               "data.synthetic.num_eval": 8,
               "sampling.steps": 25}  # the evaluation sampler of the learning curves
COMPARE = ("biharmonic/none", "harmonic/none", "biharmonic2d/none", "axial/none/mean4",
           "hierarchical/fixed/mean4", "hierarchical/adaptive/mean4", "hierarchical/none/mean4",
           "coronal/none/mean4", "tpdm/none/mean4", "average/none/mean4")
UNSEEN_FAMILY = "box"  # held-out masks of a shape family no variant trains on
STUDY = {
    **{f"{name}.{k}": v for name in ("axial", "coronal") for k, v in SLICE_MODEL.items()},
    "compare": COMPARE,
    "compare_families": (UNSEEN_FAMILY,),
    "sampling.steps": 25,
}


def slice_levers(**data):
  """Slices of whole volumes (`data.source = 'volumes'`) and the given `data` keys, for
  both views."""
  keys = {"source": "volumes", **data}
  return {f"{name}.data.{k}": v for name in ("axial", "coronal") for k, v in keys.items()}


# Composable: 'context+prior+residual' applies the three.
LEVERS = {
    "volumes": slice_levers(),
    "context": slice_levers(context=2),
    "prior": slice_levers(prior="biharmonic"),
    "residual": slice_levers(prior="biharmonic", residual=True),
    "healthy": slice_levers(loss_exclude="mask-unhealthy"),
    "best": slice_levers(context=2, prior="biharmonic", residual=True,
                         loss_exclude="mask-unhealthy"),
    # The residual (t1n - fill) / 0.5 instead of / 2: its std in the training holes is about
    # 0.35 instead of 0.09, above the noise of more of the walk's steps (realism).
    "scaled": slice_levers(prior="biharmonic", residual=True, residual_scale=0.5),
    "edm": {f"{name}.diffusion.{k}": v for name in ("axial", "coronal")
            for k, v in (("parameterization", "edm"), ("sigma_data", 0.0))},
    "lognormal": {f"{name}.diffusion.noise_levels": "lognormal" for name in ("axial", "coronal")},
    "karras": {"sampling.spacing": "karras"},
    "families": {**slice_levers(),  # 3D holes: slices of whole volumes
                 **{f"{name}.data.random_masks.families": ("lesion", "ellipsoid", "blob")
                    for name in ("axial", "coronal")}},
    "priordrop": slice_levers(prior="biharmonic", prior_dropout=0.3),
    "tpdm": {"pipeline.refiner": "tpdm"},
    "band": {"sampling.eta": 1.0, "sampling.eta_band": (0.05, 1.0)},
    "realism": {"compare": ("biharmonic/none", "axial/none/mean4", "hierarchical/none/mean4")},
    "short": {"compare": ("biharmonic/none", "axial/none/mean4", "hierarchical/none/mean4",
                          "hierarchical/fixed")},
}

VARIANTS = {**quickstart.VARIANTS, **LEVERS}


def get_config(variant=""):
  """The study; a lever's variant changes the slice models, `tiny` shrinks it to the
  quickstart's test size ('tiny+residual' both)."""
  c = base.set_keys(quickstart.get_config(), STUDY)
  c.job = "inpaint_study"
  return base.apply_variant(c, variant, VARIANTS)
