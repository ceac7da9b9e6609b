"""Adaptive RePaint resampling: loop counts per mask region and per step.

With `pipeline.resampling.mode = 'adaptive'` the volume sampler passes
`adaptive_loops(...)` as the `loops_fn` of `sampler.Resampling`:

the unknown voxels of mask component k (26-connected) take
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

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

MAX_REGIONS = 16  # mask components beyond this are merged into the last region


def mask_regions(mask, brain, *, context_width, size_ratio, max_regions=MAX_REGIONS):
  """26-connected mask components and their size term s_k (see the module docstring).

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
  """loops_fn(x0_hat, i) for `sampler.Resampling` (see the module docstring)."""
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
