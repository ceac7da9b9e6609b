"""Pseudo-healthy 3D inpainting with perpendicular 2D diffusion models, coarse to fine.

The method (`pipeline.method = 'hierarchical'`):
  stage 1  the axial model inpaints the masked region from pure noise;
  stage 2  the stage-1 volume is noised to level t0 (SDEdit) and the coronal model
           denoises it, the known region fixed at every step.
Baselines are other configurations of the same sampler (`METHODS`): one model
alone ('axial', 'coronal'), TPDM-style alternation of the two from step to step
('tpdm'), and their average ('average').

Every stage is one `diffusion.sample` call under one `jit`: a volume denoiser
(`volume_denoisers.slicewise`, only on slices that meet the dilated mask), the
known region replaced by a q(x_t | x0) sample after every step
(`inpainting.known_region_replacement`), and RePaint resampling with a per-region
loop count (`pipeline.resampling.mode`):

  none      no resampling;
  fixed     every voxel takes `max_loops` loops at every anchor step (RePaint);
  adaptive  the unknown voxels of mask component k (26-connected) take
                u_k(i) = round(max_loops * w(i) * s_k * d_k(i))
            loops at anchor step i, where
              w(i) = sqrt(1 - abar_i), the noise level: more loops early, none at the end;
              s_k = min(1, rho_k / size_ratio), rho_k = |R_k| / |C_k|: the unknown region's
                    size relative to its context C_k, the known brain voxels within
                    `context_width` voxels of it (large holes with little context get
                    more loops; holes with rho_k >= size_ratio get the full count);
              d_k(i) = min(1, mean_{R_k} |x0_hat_i - x_ref| / disagreement_scale): how far
                    the current x0 estimate is from the other view's result (stage 2: the
                    axial stage-1 volume); 1 when there is no other view (stage 1).
            Known voxels follow the largest u_k, so a volume without mask, or whose
            regions need no loops, runs no loop at all, and the loops no voxel takes
            are skipped without evaluating the network.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.ndimage as ndi

from sciimg_jax import checkpoint
from sciimg_jax import diffusion
from sciimg_jax import inpainting
from sciimg_jax import sharding
from sciimg_jax import train
from sciimg_jax import volume_denoisers
from sciimg_jax.errors import InputError

MAX_REGIONS = 16  # mask components beyond this are merged into the last region


@dataclasses.dataclass
class SliceModel:
  """A trained 2D (x_t, conditions) -> epsilon model and what it was trained with."""
  name: str
  axis: int
  config: ml_collections.ConfigDict
  params: object
  apply: object  # (params, x, cond, t) -> model output, float32

  @property
  def image_size(self):
    return tuple(self.config.data.image_size)


def slice_model(config, name, mesh, checkpointer=None):
  """A SliceModel for the training config `config`: EMA parameters restored from the
  latest checkpoint of `checkpointer`, or a fresh initialisation (benchmarks)."""
  graphdef, rest, state, _, _ = train.create_train_state(config, mesh)
  if checkpointer is not None:
    state = checkpointer.restore(checkpoint.abstract_like(state, sharding.replicated(mesh)), None)

  def apply(params, x, cond, t):
    return train.model_apply(graphdef, rest, params, x, cond, t).astype(jnp.float32)

  return SliceModel(name=name, axis=volume_denoisers.AXES[config.data.axis], config=config,
                    params=state.ema_params, apply=apply)


def load_slice_model(workdir, name, mesh):
  """The EMA parameters of the latest checkpoint of a training run in `workdir`."""
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise InputError(workdir, f"no checkpoints/ folder: train the {name} model there first "
                     f"(python main.py --config=configs/inpaint_{name}.py --workdir={workdir})")
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  if ckpt.latest_step() is None:
    raise InputError(ckpt_dir, "holds no checkpoint")
  config = ml_collections.ConfigDict(ckpt.restore_config())
  if config.data.axis != name:
    raise InputError(workdir, f"holds a {config.data.axis} model, expected {name}")
  model = slice_model(config, name, mesh, ckpt)
  ckpt.close()
  return model


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


def mask_regions(mask, brain, *, context_width, size_ratio, max_regions=MAX_REGIONS):
  """26-connected mask components and their size term s_k (see module docstring).

  Returns (labels (X, Y, Z) int32 with 0 = known, s (max_regions + 1,) float32).
  """
  labels, n = ndi.label(mask > 0, structure=np.ones((3, 3, 3)))
  labels = np.minimum(labels, max_regions).astype(np.int32)
  s = np.zeros(max_regions + 1, np.float32)
  known_brain = (brain > 0) & (mask == 0)
  for k in range(1, min(n, max_regions) + 1):
    region = labels == k
    context = ndi.binary_dilation(region, iterations=context_width) & known_brain
    rho = region.sum() / max(context.sum(), 1)
    s[k] = min(1.0, rho / size_ratio)
  return labels, s


def adaptive_loops(schedule, labels, size_term, reference, *, max_loops, disagreement_scale):
  """loops_fn(x0_hat, i) for `diffusion.Resampling` (see the module docstring)."""
  num = size_term.shape[0]
  flat = labels.ravel()
  counts = jnp.maximum(jax.ops.segment_sum(jnp.ones_like(flat, jnp.float32), flat, num), 1.0)

  def loops_fn(x0_hat, i):
    noise = jnp.sqrt(1.0 - schedule.alphas_cumprod[i])
    if reference is None:
      agree = jnp.ones((num,), jnp.float32)
    else:
      diff = jax.ops.segment_sum(jnp.abs(x0_hat - reference).ravel(), flat, num) / counts
      agree = jnp.minimum(diff / disagreement_scale, 1.0)
    u = jnp.round(max_loops * noise * size_term * agree).astype(jnp.int32)
    u = u.at[0].set(jnp.max(u[1:]))  # known voxels follow the busiest region
    return u[labels]

  return loops_fn


# The conditioning channels of the slice models, in any order.
CONDITIONS = ("t1n-voided", "mask")


class VolumeInpainter:
  """Inpaints normalised volumes with the configured method (see `sciimg_jax.inpaint_volumes`).

  `volume_shape` is the shape volumes must be padded/cropped to: (X, Y) of the
  axial model's slices and Z of the coronal model's.
  """

  def __init__(self, config, models=None, mesh=None):
    p = config.pipeline
    if p.method not in METHODS:
      raise InputError("pipeline.method", f"unknown method {p.method!r}; known: {', '.join(METHODS)}")
    if p.resampling.mode not in RESAMPLING_MODES:
      raise InputError("pipeline.resampling.mode", f"unknown mode {p.resampling.mode!r}; "
                       f"known: {', '.join(RESAMPLING_MODES)}")
    self.config = config
    self.name = f"{p.method}/{p.resampling.mode}"
    self.mesh = mesh or sharding.make_mesh()
    self.models = models or {name: load_slice_model(config.pipeline[f"{name}_workdir"], name, self.mesh)
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
    self.train_schedule = diffusion.schedule_from_config(d)
    self.parameterization = d.parameterization
    self.stages = METHODS[p.method](p)
    self.schedules, self.starts = [], []
    for stage in self.stages:  # respaced chains and SDEdit start indices, on the host
      schedule = diffusion.respace(self.train_schedule, stage.steps, p.spacing)
      start = np.searchsorted(np.asarray(schedule.timesteps),
                              stage.t0 * self.train_schedule.num_train_timesteps, "right") - 1
      self.schedules.append(schedule)
      self.starts.append(int(min(max(start, 0), stage.steps - 1)))
    self.chunk_size = -(-p.chunk_size // self.mesh.devices.size) * self.mesh.devices.size
    self._run = jax.jit(self._sample)

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
                                      chunk_size=self.chunk_size, mesh=self.mesh)

  def _sample(self, params, case, key):
    p = self.config.pipeline
    known, mask = case["known"], case["mask"]
    x = None
    for n, (stage, schedule, start) in enumerate(zip(self.stages, self.schedules, self.starts)):
      stage_key = jax.random.fold_in(key, n)
      noise = jax.random.normal(jax.random.fold_in(stage_key, 1 << 30), known.shape)
      x_init = noise if x is None or stage.t0 >= 1.0 else diffusion.q_sample(
          schedule, x, jnp.full((known.shape[0],), start), noise)
      resampling = None
      if p.resampling.mode != "none" and p.resampling.max_loops:
        loops_fn = None
        if p.resampling.mode == "adaptive":
          loops_fn = adaptive_loops(
              schedule, case["labels"], case["size_term"], x if stage.reference else None,
              max_loops=p.resampling.max_loops, disagreement_scale=p.resampling.disagreement_scale)
        resampling = diffusion.Resampling(p.resampling.jump_length, p.resampling.max_loops, loops_fn)
      x = diffusion.sample(
          self._denoiser(stage.denoiser, params, case, schedule), schedule, x_init, stage_key,
          parameterization=self.parameterization, stepper=stage.stepper, eta=stage.eta,
          start_index=start, clip_x0=1.0, resampling=resampling,
          post_step_fn=inpainting.known_region_replacement(schedule, known, mask))
    return mask * x + (1.0 - mask) * known

  def prepare(self, voided, mask):
    """Host-side, per case: slices to evaluate and mask regions."""
    p = self.config.pipeline
    case = {"known": np.asarray(voided, np.float32), "mask": np.asarray(mask > 0, np.float32)}
    if p.slice_restriction:
      for name, model in self.models.items():
        idx = volume_denoisers.active_slices(mask, model.axis, dilation=p.mask_dilation,
                                             chunk_size=self.chunk_size)
        case[f"slices_{name}"] = idx if len(idx) else np.zeros(self.chunk_size, np.int32)
    if p.resampling.mode == "adaptive" and p.resampling.max_loops:  # only adaptive loops use them
      labels, size_term = mask_regions(mask, voided > -1.0, context_width=p.resampling.context_width,
                                       size_ratio=p.resampling.size_ratio)
      case.update(labels=labels, size_term=size_term)
    return case

  def __call__(self, voided, mask, key):
    if tuple(voided.shape) != self.volume_shape:
      raise InputError("volume", f"shape {voided.shape} is not the inpainter's {self.volume_shape}")
    params = {name: m.params for name, m in self.models.items()}
    return np.asarray(jax.device_get(self._run(params, self.prepare(voided, mask), key)))


def build_inpainter(config):
  return VolumeInpainter(config)
