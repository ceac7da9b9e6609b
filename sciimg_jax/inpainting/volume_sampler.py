"""Pseudo-healthy 3D inpainting with perpendicular 2D diffusion models, coarse to fine.

The method (`pipeline.method = 'hierarchical'`):
  stage 1  the axial model inpaints the masked region from pure noise;
  stage 2  the stage-1 volume is noised to level t0 (SDEdit) and the coronal model
           denoises it, the known region fixed at every step.
Baselines are other configurations of the same sampler (`METHODS`): one model
alone ('axial', 'coronal'), TPDM-style alternation of the two from step to step
('tpdm'), and their average ('average').

Every stage is one `sampler.sample` call under one `jit`: a volume denoiser
(`volume_denoisers.slicewise`, only on slices that meet the dilated mask), the
known region replaced by a q(x_t | x0) sample after every step
(`known_region.known_region_replacement`), and RePaint resampling with a per-region
loop count (`pipeline.resampling.mode`):

Posterior mean: `pipeline.num_samples = N` draws N samples in one jitted call (the
sampler vmapped over N keys, so every network call takes N times the slices) and
the inpainter returns them stacked, (N, X, Y, Z); sample i uses `fold_in(key, i)`, so
sample 0 is the one-sample result. The job writes their mean (and std).

  none      no resampling;
  fixed     every voxel takes `max_loops` loops at every anchor step (RePaint);
  adaptive  loop counts per mask region and step (`adaptive_resampling`): more
            loops while the noise is high, for large holes with little context, and
            where the two views disagree; none where there is no mask.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sciimg_jax.core import sharding
from sciimg_jax.core.diffusion import sampler
from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion import volume_denoisers
from sciimg_jax.core.diffusion.steppers import STEPPERS
from sciimg_jax.core.errors import InputError
from sciimg_jax.inpainting import adaptive_resampling
from sciimg_jax.inpainting import classical
from sciimg_jax.inpainting import known_region
from sciimg_jax.inpainting import slice_models
from sciimg_jax.inpainting.slice_task import CONDITIONS

INIT_NOISE_STREAM = 1 << 30  # fold_in salt of a stage's starting noise (off the step keys)
SAMPLES_AXIS = "samples"     # the vmapped axis of `num_samples` samples
CHUNK_QUANTUM = 8            # mask slices are padded to a multiple of this


@dataclasses.dataclass(frozen=True)
class Stage:
  denoiser: str    # axial | coronal | average | tpdm
  steps: int
  t0: float        # 1.0: start from noise; < 1: SDEdit from the previous stage at t0 * T
  stepper: str
  eta: float
  reference: bool  # adaptive resampling compares with the previous stage's result


def hierarchical(p):
  return [Stage("axial", p.stage1.steps, 1.0, p.stage1.stepper, p.stage1.eta, False),
          Stage("coronal", p.stage2.steps, p.stage2.t0, p.stage2.stepper, p.stage2.eta, True)]


def single(name):
  return lambda p: [Stage(name, p.stage1.steps, 1.0, p.stage1.stepper, p.stage1.eta, False)]


METHODS = {
    "hierarchical": hierarchical,
    "axial": single("axial"),
    "coronal": single("coronal"),
    "tpdm": single("tpdm"),
    "average": single("average"),
}
RESAMPLING_MODES = ("none", "fixed", "adaptive")



def check_pipeline_config(p):
  """Raises InputError naming the `pipeline.*` key of the first bad value, before any work."""
  def check(key, ok, problem):
    if not ok:
      raise InputError(f"pipeline.{key}", problem)

  known = tuple(METHODS) + tuple(classical.FILLS)
  check("method", p.method in known, f"unknown method {p.method!r}; known: {', '.join(known)}")
  check("resampling.mode", p.resampling.mode in RESAMPLING_MODES,
        f"unknown mode {p.resampling.mode!r}; known: {', '.join(RESAMPLING_MODES)}")
  for stage in ("stage1", "stage2"):
    s = p[stage]
    check(f"{stage}.steps", isinstance(s.steps, int) and s.steps >= 1,
          f"must be a whole number >= 1, got {s.steps!r}")
    check(f"{stage}.stepper", s.stepper in STEPPERS,
          f"unknown stepper {s.stepper!r}; known: {', '.join(STEPPERS)}")
    check(f"{stage}.eta", s.eta >= 0, f"must be >= 0, got {s.eta!r}")
  check("stage2.t0", 0 < p.stage2.t0 <= 1, f"must be in (0, 1], got {p.stage2.t0!r}")
  r = p.resampling
  check("resampling.max_loops", r.max_loops >= 0, f"must be >= 0, got {r.max_loops!r}")
  check("resampling.jump_length", r.jump_length >= 1, f"must be >= 1, got {r.jump_length!r}")
  check("resampling.context_width", r.context_width >= 0, f"must be >= 0, got {r.context_width!r}")
  for key in ("size_ratio", "disagreement_scale"):
    check(f"resampling.{key}", r[key] > 0, f"must be > 0, got {r[key]!r}")
  check("chunk_size", p.chunk_size >= 1, f"must be >= 1, got {p.chunk_size!r}")
  check("num_samples", isinstance(p.num_samples, int) and p.num_samples >= 1,
        f"must be a whole number >= 1, got {p.num_samples!r}")
  check("mask_dilation", p.mask_dilation >= 0, f"must be >= 0, got {p.mask_dilation!r}")
  check("classical_margin", p.classical_margin >= 1, f"must be >= 1, got {p.classical_margin!r}")
  check("clip_x0", p.clip_x0 >= 0, f"must be >= 0 (0 = no clipping), got {p.clip_x0!r}")
  check("spacing", p.spacing in schedules.SPACINGS,
        f"unknown spacing {p.spacing!r}; known: {', '.join(schedules.SPACINGS)}")


class VolumeInpainter:
  """Inpaints normalised volumes with the configured method (see `inpaint_job`).

  `volume_shape` is the shape volumes must be padded/cropped to: (X, Y) of the
  axial model's slices and Z of the coronal model's.
  """

  def __init__(self, config, models=None, mesh=None):
    check_pipeline_config(config.pipeline)
    p = config.pipeline
    if p.method not in METHODS:
      raise InputError("pipeline.method", f"{p.method!r} is not a diffusion method; "
                       "inpaint_job.build_inpainter builds every method")
    self.config = config
    self.name = f"{p.method}/{p.resampling.mode}"
    self.mesh = mesh or sharding.make_mesh()
    self.models = models or {
        name: slice_models.load_slice_model(p[f"{name}_workdir"], name, self.mesh)
        for name in ("axial", "coronal")}
    axial, coronal = self.models["axial"], self.models["coronal"]
    if axial.image_size[0] != coronal.image_size[0]:
      raise InputError("pipeline", f"axial slices {axial.image_size} and coronal slices "
                       f"{coronal.image_size} must share their first (X) size")
    self.volume_shape = (axial.image_size[0], axial.image_size[1], coronal.image_size[1])
    d = axial.config.diffusion
    for m in (axial, coronal):
      for key in ("schedule", "num_timesteps", "beta_start", "beta_end", "parameterization"):
        if m.config.diffusion[key] != d[key]:
          raise InputError("pipeline", f"the axial and coronal models differ in diffusion.{key}")
      if sorted(m.config.data.conditions) != sorted(CONDITIONS):
        raise InputError("pipeline", f"the {m.name} model is conditioned on "
                         f"{list(m.config.data.conditions)}; inpainting needs {list(CONDITIONS)}")
    self.train_schedule = schedules.schedule_from_config(d)
    self.parameterization = d.parameterization
    self.stages = METHODS[p.method](p)
    self.schedules, self.starts = [], []
    for stage in self.stages:  # respaced chains and SDEdit start indices, on the host
      schedule = schedules.respace(self.train_schedule, stage.steps, p.spacing)
      start = np.searchsorted(np.asarray(schedule.timesteps),
                              stage.t0 * self.train_schedule.num_train_timesteps, "right") - 1
      self.schedules.append(schedule)
      self.starts.append(int(min(max(start, 0), stage.steps - 1)))
    # A network call takes `chunk_size` slices in all, N samples x chunk_size // N each;
    # chunks are multiples of the device count (each splits over the mesh), and the mask
    # slices are padded to a multiple of CHUNK_QUANTUM so that cases with a few more or
    # fewer of them share one compiled sampler.
    self.devices = self.mesh.devices.size
    self.num_samples = p.num_samples
    self.chunk_size = max(p.chunk_size // p.num_samples, 1)
    self.quantum = -(-CHUNK_QUANTUM // self.devices) * self.devices
    self._run = jax.jit(jax.vmap(self._sample, in_axes=(None, None, 0), axis_name=SAMPLES_AXIS))

  def _denoiser(self, name, params, case, schedule):
    if name in ("average", "tpdm"):
      parts = [self._denoiser(n, params, case, schedule) for n in ("axial", "coronal")]
      return (volume_denoisers.average(parts) if name == "average"
              else volume_denoisers.alternate(parts, schedule.timesteps))
    model = self.models[name]
    volumes = {"t1n-voided": case["known"], "mask": case["mask"]}
    cond = jnp.stack([volumes[c] for c in model.config.data.conditions], axis=-1)
    apply = lambda x, c, t: model.apply(params[name], x, c, t)
    return volume_denoisers.slicewise(apply, cond, model.axis, case.get(f"slices_{name}"),
                                      chunk_size=self.chunk_size, mesh=self.mesh,
                                      multiple=self.devices)

  def _sample(self, params, case, key):
    p = self.config.pipeline
    known, mask = case["known"], case["mask"]
    x = None
    for n, (stage, schedule, start) in enumerate(zip(self.stages, self.schedules, self.starts)):
      stage_key = jax.random.fold_in(key, n)
      noise = jax.random.normal(jax.random.fold_in(stage_key, INIT_NOISE_STREAM), known.shape)
      x_init = noise if x is None or stage.t0 >= 1.0 else schedules.q_sample(
          schedule, x, jnp.full((known.shape[0],), start), noise)
      resampling = None
      if p.resampling.mode != "none" and p.resampling.max_loops:
        loops_fn = None
        if p.resampling.mode == "adaptive":
          loops_fn = adaptive_resampling.adaptive_loops(
              schedule, case["labels"], case["size_term"], x if stage.reference else None,
              max_loops=p.resampling.max_loops, disagreement_scale=p.resampling.disagreement_scale)
        resampling = sampler.Resampling(p.resampling.jump_length, p.resampling.max_loops, loops_fn,
                                        batch_axis_name=SAMPLES_AXIS)
      x = sampler.sample(
          self._denoiser(stage.denoiser, params, case, schedule), schedule, x_init, stage_key,
          parameterization=self.parameterization, stepper=stage.stepper, eta=stage.eta,
          start_index=start, clip_x0=p.clip_x0 or None, resampling=resampling,
          post_step_fn=known_region.known_region_replacement(schedule, known, mask))
    return mask * x + (1.0 - mask) * known

  def prepare(self, voided, mask):
    """Host-side, per case: slices to evaluate and mask regions."""
    p = self.config.pipeline
    case = {"known": np.asarray(voided, np.float32), "mask": np.asarray(mask > 0, np.float32)}
    if p.slice_restriction:
      for name, model in self.models.items():
        idx = volume_denoisers.active_slices(mask, model.axis, dilation=p.mask_dilation,
                                             quantum=self.quantum)
        case[f"slices_{name}"] = idx if len(idx) else np.zeros(self.quantum, np.int32)
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
    params = {name: m.params for name, m in self.models.items()}
    keys = jnp.stack([jax.random.fold_in(key, i) for i in range(self.num_samples)])
    samples = np.asarray(jax.device_get(self._run(params, self.prepare(voided, mask), keys)))
    return samples[0] if self.num_samples == 1 else samples

