"""The one `sampling` config block: how every job walks a diffusion chain.

  sampling.steps        respaced chain length
  sampling.stepper      a key of `steppers.STEPPERS` (ddim | ddpm | dpm++2m)
  sampling.eta          DDIM noise scale (>= 0)
  sampling.eta_band     () for eta at every step, or (lo, hi): eta only at the steps whose
                        noise level sigma = sqrt((1 - abar) / abar) lies in [lo, hi]
  sampling.spacing      a key of `schedules.SPACINGS` (uniform | linspace | karras)
  sampling.clip_x0      clip the predicted x0 to [-c, c] at every step; 0 = no clipping
  sampling.num_samples  N > 1: N samples in one jitted call (their mean is the result)
  sampling.chunk_size   most slices per 2D network call, all samples together

A method may add its own keys to the block (the ensembler's `data_consistency`) and
per-stage sub-blocks that override `steps`, `stepper` or `eta` for one stage (inpainting's
`sampling.stage2`, which also holds its SDEdit start `t0`); an override left unset
(None) takes the block's value. `check` validates the block (and its stage sub-blocks)
before any work; `stage` merges a stage's overrides.
"""

import dataclasses

from sciimg_jax.core.diffusion import schedules
from sciimg_jax.core.diffusion.steppers import STEPPERS
from sciimg_jax.core.errors import InputError

STAGE_KEYS = ("steps", "stepper", "eta")


@dataclasses.dataclass(frozen=True)
class Walk:
  """The settings of one walk (a stage), after overrides."""
  steps: int
  stepper: str
  eta: float
  spacing: str
  clip_x0: float
  eta_band: tuple = ()

  @property
  def clip(self):
    """`sampler.sample`'s clip_x0 argument: None for no clipping."""
    return self.clip_x0 or None

  @property
  def step_args(self):
    """`sampler.sample`'s arguments of how each step is taken: stepper, eta, eta_band."""
    return {"stepper": self.stepper, "eta": self.eta, "eta_band": self.eta_band}


def _check_walk(s, where):
  def check(key, ok, problem):
    if not ok:
      raise InputError(f"{where}.{key}", problem)
  if s.get("steps") is not None:
    check("steps", isinstance(s.steps, int) and not isinstance(s.steps, bool) and s.steps >= 1,
          f"must be a whole number >= 1, got {s.steps!r}")
  if s.get("stepper") is not None:
    check("stepper", s.stepper in STEPPERS,
          f"unknown stepper {s.stepper!r}; known: {', '.join(STEPPERS)}")
  if s.get("eta") is not None:
    check("eta", s.eta >= 0, f"must be >= 0, got {s.eta!r}")


def check(s, where="sampling", stages=()):
  """Raises InputError naming the key of the first bad value of the block `s`."""
  def check_key(key, ok, problem):
    if not ok:
      raise InputError(f"{where}.{key}", problem)
  for key in STAGE_KEYS + ("spacing", "clip_x0", "num_samples", "chunk_size"):
    check_key(key, key in s and s[key] is not None, "is missing")
  _check_walk(s, where)
  check_key("spacing", s.spacing in schedules.SPACINGS,
            f"unknown spacing {s.spacing!r}; known: {', '.join(schedules.SPACINGS)}")
  band = tuple(s.get("eta_band") or ())
  check_key("eta_band", band == () or (
      len(band) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                             for v in band) and 0 <= band[0] < band[1]),
            f"must be () or two noise levels (lo, hi) with 0 <= lo < hi, got {s.eta_band!r}")
  check_key("clip_x0", s.clip_x0 >= 0, f"must be >= 0 (0 = no clipping), got {s.clip_x0!r}")
  check_key("num_samples", isinstance(s.num_samples, int) and s.num_samples >= 1,
            f"must be a whole number >= 1, got {s.num_samples!r}")
  check_key("chunk_size", isinstance(s.chunk_size, int) and s.chunk_size >= 1,
            f"must be a whole number >= 1, got {s.chunk_size!r}")
  for name in stages:
    check_key(name, name in s, "is missing")
    _check_walk(s[name], f"{where}.{name}")


def stage(s, name=None):
  """The `Walk` of stage `name` (its overrides over the block), or of the block itself."""
  over = s[name] if name is not None else {}
  pick = lambda key: over[key] if over.get(key) is not None else s[key]
  return Walk(steps=pick("steps"), stepper=pick("stepper"), eta=pick("eta"),
              spacing=s.spacing, clip_x0=s.clip_x0,
              eta_band=tuple(s.get("eta_band") or ()))
