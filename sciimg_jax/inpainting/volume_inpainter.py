"""Pseudo-healthy 3D inpainting with perpendicular 2D diffusion models, coarse to fine.

The method (`pipeline.method = 'hierarchical'`):
  stage 1  the axial model inpaints the masked region from pure noise;
  stage 2  the stage-1 volume is noised to level `sampling.stage2.t0` (SDEdit) and the coronal model
           denoises it, the known region fixed at every step (`pipeline.refiner = 'coronal'`;
           'tpdm' alternates the axial and coronal models from step to step instead, so
           that neither leaves its slice seams in the last steps).
Baselines are other configurations of the same sampler (`METHODS`): one model
alone ('axial', 'coronal') or any combinator of the core volume sampler in one stage:
TPDM-style alternation of the two from step to step ('tpdm') and their average
('average').

Every stage is one `sampler.sample` call: a volume denoiser of the core
`volume_sampler.VolumeSampler` (with `pipeline.slice_restriction`, only on the slices
that meet the mask dilated by `pipeline.mask_dilation`), the known region replaced by a
q(x_t | x0) sample after every step (`known_region.known_region_replacement`), and
RePaint resampling with a per-region loop count (`pipeline.resampling.mode`):

  none      no resampling;
  fixed     every voxel takes `max_loops` loops at every anchor step (RePaint);
  adaptive  loop counts per mask region and step (`adaptive_resampling`): more
            loops while the noise is high, for large holes with little context, and
            where the two views disagree; none where there is no mask.

Models trained on slices of volumes (`training_volumes`) may see more: the classical
prior (the chain's third channel, the `data.prior` fill of the voided volume, computed
once per case) and the through-plane context of `data.context` slices on each side (added
by the core sampler). Models with a residual target (`data.residual`) put the chain in
the space of (image - prior) / s (`data.residual_scale`), where the known region is zero;
the result is s x + prior. Everything is read from the checkpoints' configs; the two models must agree
on the residual and on the prior's fill.

Posterior mean: `sampling.num_samples = N` draws N samples in one jitted call (the
sampler vmapped over N keys, so every network call takes the slices of all samples) and
the inpainter returns them stacked, (N, X, Y, Z); sample i uses `fold_in(key, i)`, so
sample 0 is the one-sample result. The job writes their mean (and std).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sciimg_jax.core import sharding
from sciimg_jax.core import slice_context
from sciimg_jax.core import trained_models
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import sampling_config
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import slice_models
from sciimg_jax.core.diffusion import volume_sampler
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import adaptive_resampling
from sciimg_jax.inpainting import chain_space
from sciimg_jax.inpainting import classical
from sciimg_jax.inpainting import known_region
from sciimg_jax.inpainting.known_region import CONDITIONS

MODELS = ("axial", "coronal")
CHAIN_CHANNELS = CONDITIONS + (chain_space.PRIOR_CHANNEL,)  # known, mask, prior


@dataclasses.dataclass(frozen=True)
class Stage:
  denoiser: str    # axial | coronal | average | tpdm
  walk: sampling_config.Walk
  t0: float        # 1.0: start from noise; < 1: SDEdit from the previous stage at t0 * T
  reference: bool  # adaptive resampling compares with the previous stage's result


def hierarchical(c):
  return [Stage("axial", sampling_config.stage(c.sampling), 1.0, False),
          Stage(c.pipeline.refiner, sampling_config.stage(c.sampling, "stage2"),
                c.sampling.stage2.t0, True)]


def single(name):
  return lambda c: [Stage(name, sampling_config.stage(c.sampling), 1.0, False)]


# One stage with one model or one of the core sampler's combinators, or the two stages.
METHODS = {"hierarchical": hierarchical,
           **{name: single(name) for name in MODELS + tuple(volume_sampler.COMBINATORS)}}
RESAMPLING_MODES = ("none", "fixed", "adaptive")


def check_config(config):
  """Raises InputError naming the `pipeline.*` or `sampling.*` key of the first bad value,
  before any work."""
  p = config.pipeline

  def check(key, ok, problem):
    if not ok:
      raise InputError(key, problem)

  known = tuple(METHODS) + tuple(classical.FILLS)
  check("pipeline.method", p.method in known,
        f"unknown method {p.method!r}; known: {', '.join(known)}")
  refiners = MODELS + tuple(volume_sampler.COMBINATORS)
  check("pipeline.refiner", p.refiner in refiners,
        f"unknown refiner {p.refiner!r}; known: {', '.join(refiners)}")
  check("pipeline.resampling.mode", p.resampling.mode in RESAMPLING_MODES,
        f"unknown mode {p.resampling.mode!r}; known: {', '.join(RESAMPLING_MODES)}")
  sampling_config.check(config.sampling, stages=("stage2",))
  t0 = config.sampling.stage2.t0
  check("sampling.stage2.t0", 0 < t0 <= 1, f"must be in (0, 1], got {t0!r}")
  r = p.resampling
  check("pipeline.resampling.max_loops", r.max_loops >= 0, f"must be >= 0, got {r.max_loops!r}")
  check("pipeline.resampling.jump_length", r.jump_length >= 1,
        f"must be >= 1, got {r.jump_length!r}")
  check("pipeline.resampling.context_width", r.context_width >= 0,
        f"must be >= 0, got {r.context_width!r}")
  for key in ("size_ratio", "disagreement_scale"):
    check(f"pipeline.resampling.{key}", r[key] > 0, f"must be > 0, got {r[key]!r}")
  check("pipeline.mask_dilation", p.mask_dilation >= 0, f"must be >= 0, got {p.mask_dilation!r}")
  check("pipeline.classical_margin", p.classical_margin >= 1,
        f"must be >= 1, got {p.classical_margin!r}")
  if r.mode != "none" and r.max_loops:
    for stage, key in ((None, "sampling.stepper"), ("stage2", "sampling.stage2.stepper")):
      sampler.check_stepper_loops(sampling_config.stage(config.sampling, stage).stepper, key)


def check_conditions(config, name):
  """Stops unless the `name` model of training config `config` sees `CONDITIONS`."""
  if sorted(config.data.conditions) != sorted(CONDITIONS):
    raise InputError("pipeline", f"the {name} model is conditioned on "
                     f"{list(config.data.conditions)}; inpainting needs {list(CONDITIONS)}")


def as_slice_model(trained, name):
  """The inpainting model `name` of a trained run: its own chain on `CHAIN_CHANNELS`."""
  check_conditions(trained.config, name)
  data = trained.config.data
  return slice_models.from_trained(trained, CHAIN_CHANNELS, name=name,
                                   own_channels=chain_space.channel_names(data),
                                   context_fills=chain_space.CONTEXT_FILLS)


def prior_settings(models):
  """(the `data` block whose prior the chain's prior channel holds or None, the `data` block
  of a residual chain or None).

  Stops when the models disagree on the residual or the fill."""
  datas = [m.config.data for m in models]
  residual = {m.name: (bool(d.get("residual")),
                      chain_space.residual_scale(d) if d.get("residual") else None)
              for m, d in zip(models, datas)}
  if len(set(residual.values())) > 1:
    raise InputError("pipeline", f"the models disagree on (data.residual, data.residual_scale) "
                     f"({residual}): one chain holds one residual or the image")
  priors = {m.name: (d.prior, int(d.prior_margin)) for m, d in zip(models, datas)
            if d.get("prior")}
  if len(set(priors.values())) > 1:
    raise InputError("pipeline", f"the models were trained with different priors {priors} "
                     "(data.prior, data.prior_margin); the chain holds one")
  with_prior = [d for d in datas if d.get("prior")]
  return ((with_prior[0] if with_prior else None),
          next((d for d in datas if d.get("residual")), None))


def fresh_slice_model(config, name, mesh):
  """A slice model of the training config `config` with fresh parameters (benchmarks, tests)."""
  return as_slice_model(trained_models.restore(config, mesh), name)


def load_slice_model(workdir, name, mesh):
  """The EMA parameters of the latest checkpoint of the `name` training run in `workdir`."""
  def check(config):
    if config.data.axis != name:
      raise InputError(workdir, f"holds a {config.data.axis} model, expected {name}")

  hint = (f"train the {name} model there first "
          f"(python main.py --config=configs/inpainting/{name}.py --workdir={workdir})")
  return as_slice_model(trained_models.load(workdir, mesh, hint=hint, check=check), name)


class VolumeInpainter:
  """Inpaints normalised volumes with the configured method (see `inpaint_job`).

  `volume_shape` is the shape volumes must be padded/cropped to: (X, Y) of the
  axial model's slices and Z of the coronal model's.
  """

  def __init__(self, config, models=None, mesh=None):
    check_config(config)
    p, s = config.pipeline, config.sampling
    if p.method not in METHODS:
      raise InputError("pipeline.method", f"{p.method!r} is not a diffusion method; "
                       "inpaint_job.build_inpainter builds every method")
    self.config = config
    self.name = f"{p.method}/{p.resampling.mode}"
    mesh = mesh or sharding.local_mesh()
    models = models or {}
    models = [models[name] if name in models
              else load_slice_model(p[f"{name}_workdir"], name, mesh) for name in MODELS]
    axial, coronal = models
    if axial.image_size[0] != coronal.image_size[0]:
      raise InputError("pipeline", f"axial slices {axial.image_size} and coronal slices "
                       f"{coronal.image_size} must share their first (X) size")
    self.volume_shape = (axial.image_size[0], axial.image_size[1], coronal.image_size[1])
    for m in models:
      slice_context.check(m.context, self.volume_shape[m.axis], where="pipeline",
                          key=f"the {m.name} model's data.context")
    self.prior, self.residual = prior_settings(models)
    d = axial.config.diffusion
    for m in models:
      check_conditions(m.config, m.name)
      for key in ("schedule", "num_timesteps", "beta_start", "beta_end", "parameterization"):
        if m.config.diffusion[key] != d[key]:
          raise InputError("pipeline", f"the axial and coronal models differ in diffusion.{key}")
    # edm models read in x0: each converts its output with its own sigma_data (measured on
    # its own slices, so the axial and coronal models differ), which the chain need not know
    self.parameterization = "x0" if d.parameterization == "edm" else d.parameterization
    self.sampler = volume_sampler.VolumeSampler(
        models, parameterization=self.parameterization, mesh=mesh, chunk_size=s.chunk_size,
        num_samples=s.num_samples, where="pipeline.method")
    self.models = self.sampler.models
    self.train_schedule = schedules.schedule_from_config(d)
    self.stages = METHODS[p.method](config)
    self.schedules, self.starts = [], []
    for stage in self.stages:  # respaced chains and SDEdit start indices, on the host
      schedule = schedules.respace(self.train_schedule, stage.walk.steps, stage.walk.spacing)
      start = np.searchsorted(np.asarray(schedule.timesteps),
                              stage.t0 * self.train_schedule.num_train_timesteps, "right") - 1
      self.schedules.append(schedule)
      self.starts.append(int(min(max(start, 0), stage.walk.steps - 1)))

  def chain_clip(self, clip):
    """`sampling.clip_x0` in the chain's units (a residual chain's range is wider)."""
    return chain_space.chain_clip(self.residual, clip) if self.residual is not None else clip

  @property
  def mesh(self):
    return self.sampler.mesh

  def _sample(self, params, case, key):
    r = self.config.pipeline.resampling
    known, mask, prior = case["known"], case["mask"], case["prior"]
    cond = jnp.stack([known, mask, prior], axis=-1)  # the channels of CHAIN_CHANNELS
    if self.residual is not None:
      known = chain_space.to_residual(  # 0 outside the mask
          known, prior, chain_space.residual_scale(self.residual))
    x = None
    for n, (stage, schedule, start) in enumerate(zip(self.stages, self.schedules, self.starts)):
      stage_key = jax.random.fold_in(key, n)
      noise = volume_sampler.initial_noise(stage_key, known.shape)
      x_init = noise if x is None or stage.t0 >= 1.0 else schedules.q_sample(
          schedule, x, jnp.full((known.shape[0],), start), noise)
      resampling = None
      if r.mode != "none" and r.max_loops:
        loops_fn = None
        if r.mode == "adaptive":
          loops_fn = adaptive_resampling.adaptive_loops(
              schedule, case["labels"], case["size_term"], x if stage.reference else None,
              max_loops=r.max_loops, disagreement_scale=r.disagreement_scale)
        resampling = sampler.Resampling(r.jump_length, r.max_loops, loops_fn,
                                        batch_axis_name=volume_sampler.SAMPLES_AXIS)
      denoiser = self.sampler.denoiser(stage.denoiser, params, cond, schedule,
                                       case.get("slices"))
      x = sampler.sample(
          denoiser, schedule, x_init, stage_key, parameterization=self.parameterization,
          **stage.walk.step_args, start_index=start,
          clip_x0=self.chain_clip(stage.walk.clip), resampling=resampling,
          post_step_fn=known_region.known_region_replacement(schedule, known, mask))
    image = (chain_space.from_residual(x, prior, chain_space.residual_scale(self.residual))
             if self.residual is not None else x)
    return mask * image + (1.0 - mask) * case["known"]

  def prepare(self, voided, mask):
    """Host-side, per case: slices to evaluate and mask regions."""
    p = self.config.pipeline
    case = {"known": np.asarray(voided, np.float32), "mask": np.asarray(mask > 0, np.float32)}
    case["prior"] = (chain_space.prior_volume(case["known"], case["mask"], self.prior)
                     if self.prior is not None else case["known"])
    if p.slice_restriction:
      case["slices"] = self.sampler.restricted_slices(mask, p.mask_dilation)
    if p.resampling.mode == "adaptive" and p.resampling.max_loops:  # only adaptive loops use them
      labels, size_term = adaptive_resampling.mask_regions(
          mask, voided > -1.0, context_width=p.resampling.context_width,
          size_ratio=p.resampling.size_ratio)
      case.update(labels=labels, size_term=size_term)
    return case

  def __call__(self, voided, mask, key):
    """One inpainted volume (X, Y, Z), or (N, X, Y, Z) samples for `num_samples` N > 1."""
    if tuple(voided.shape) != self.volume_shape:
      raise InputError("volume", f"shape {voided.shape} is not the inpainter's {self.volume_shape}")
    samples = self.sampler.run(self.name, self._sample, self.sampler.params(),
                               self.prepare(voided, mask), key)
    return samples[0] if self.sampler.num_samples == 1 else samples
