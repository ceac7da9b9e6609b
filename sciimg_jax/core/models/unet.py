"""A diffusion U-Net for 2D slices and 3D volumes, mirroring MONAI's `DiffusionModelUNet`.

One definition serves any number of spatial dimensions: `spatial_dims` picks 2D or 3D
convolutions. Inputs are channels-last, `(B, *spatial, C)`, and the timesteps `(B,)`.

The layout follows MONAI's `DiffusionModelUNet` (itself the LDM / guided-diffusion U-Net) with
`resblock_updown=False` and no cross-attention, so a config gives the same parameter count as the
MONAI network with the same arguments (3,939,969 for channels (32, 64, 128), two residual blocks
per level, attention at the last level, 32 channels per head, 8 groups, in 3 / out 1):

- sinusoidal timestep embedding of width `channels[0]` (cos first, then sin, as MONAI), then
  Linear -> SiLU -> Linear to `4 * channels[0]`;
- a 3x3 input convolution;
- per level: `num_res_blocks` residual blocks (each followed by self-attention where
  `attention_levels` says so), then a stride-2 3x3 convolution except at the last level;
- a middle block: residual block, self-attention, residual block;
- per level in reverse: `num_res_blocks + 1` residual blocks that each take one skip connection
  (concatenated on channels), with attention as on the way down, then nearest-neighbour x2
  upsampling and a 3x3 convolution except at the last level;
- GroupNorm -> SiLU -> a zero-initialised 3x3 output convolution, so the network outputs exactly
  zero before training.

Residual block: GroupNorm -> SiLU -> conv3x3 -> (+ Linear(SiLU(emb))) -> GroupNorm -> SiLU ->
dropout -> zero-initialised conv3x3, plus the input (through a 1x1 convolution when the width
changes). MONAI adds the time embedding; `scale_shift=True` instead predicts a per-channel scale
and shift applied after the second GroupNorm (`h * (1 + scale) + shift`, as in improved DDPM and
guided diffusion); it doubles the width of the time projections, so the parameter count then
differs from MONAI's. MONAI's block has no dropout; here `dropout > 0` adds one before the second
convolution (guided-diffusion style); it has no parameters.

Rematerialisation: `remat=True` wraps every block (residual block and its attention) in
`nnx.remat` (`jax.checkpoint`): the backward pass recomputes each block's activations from
its input instead of storing them, so a training step keeps one tensor per block (the
skip connections) rather than every intermediate, at the cost of a second forward pass.
The result is the same computation (tested equal to the plain network's gradients).

Self-attention: GroupNorm, separate q/k/v projections with bias, `channels // num_head_channels`
heads, softmax(q k^T / sqrt(head_dim)) v, an output projection and a residual connection.

Differences from MONAI that do not change the architecture: Flax's default initialisers
(LeCun-normal kernels, zero biases) instead of PyTorch's, and GroupNorm statistics always in
float32 whatever the compute dtype.

Precision: parameters are float32; `dtype` is the compute dtype (bfloat16 on GPU/TPU). Inputs and
parameters are cast to it at each operation, GroupNorm statistics and the softmax run in float32,
and the output is float32.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def timestep_embedding(t, dim, max_period=10_000.0):
  """Sinusoidal embedding of timesteps `t` (B,) -> (B, dim), float32, [cos, sin] as MONAI."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class Conv(nnx.Module):
  """An N-d convolution on channels-last inputs, with explicit (PyTorch-style) padding."""

  def __init__(self, spatial_dims, in_features, out_features, kernel_size=3, *, stride=1,
               zero_init=False, dtype=jnp.float32, rngs: nnx.Rngs):
    shape = (kernel_size,) * spatial_dims + (in_features, out_features)
    init = nnx.initializers.zeros if zero_init else nnx.initializers.lecun_normal()
    self.kernel = nnx.Param(init(rngs.params(), shape, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
    self.stride = (stride,) * spatial_dims
    self.padding = ((kernel_size // 2, kernel_size // 2),) * spatial_dims
    spatial = "DHW"[-spatial_dims:] if spatial_dims <= 3 else None
    self.dimension_numbers = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    self.dtype = dtype

  def __call__(self, x):
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        window_strides=self.stride, padding=self.padding,
        dimension_numbers=self.dimension_numbers)
    return y + self.bias[...].astype(self.dtype)


class Linear(nnx.Module):
  """A dense layer on the last axis, computed in `dtype` with float32 parameters."""

  def __init__(self, in_features, out_features, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.kernel = nnx.Param(
        nnx.initializers.lecun_normal()(rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
    self.dtype = dtype

  def __call__(self, x):
    return x.astype(self.dtype) @ self.kernel[...].astype(self.dtype) + self.bias[...].astype(
        self.dtype)


def _group_stats(x, num_groups, eps):
  """Per-(sample, group) mean and 1/std of channels-last `x`, in float32."""
  b, c = x.shape[0], x.shape[-1]
  axes = tuple(range(1, x.ndim - 1))
  n = x.size // (b * c) * (c // num_groups)             # elements per group
  xf = x.astype(jnp.float32)
  # Channel sums over space first (one fused pass over x), then sums over each group.
  s1 = jnp.sum(xf, axes).reshape(b, num_groups, -1).sum(-1)
  s2 = jnp.sum(jnp.square(xf), axes).reshape(b, num_groups, -1).sum(-1)
  mean = s1 / n
  var = jnp.maximum(s2 / n - jnp.square(mean), 0.0)
  return mean, jax.lax.rsqrt(var + eps)


def _per_channel(v, c, ndim):
  """(B, G) group values -> (B, 1, ..., 1, C) per-channel values."""
  v = jnp.repeat(v, c // v.shape[1], axis=1)
  return v.reshape((v.shape[0],) + (1,) * (ndim - 2) + (c,))


def _group_norm_fwd(x, scale, bias, num_groups, eps, silu):
  c, nd = x.shape[-1], x.ndim
  mean, inv = _group_stats(x, num_groups, eps)
  a = _per_channel(inv, c, nd) * scale
  z = x.astype(jnp.float32) * a + (bias - _per_channel(mean, c, nd) * a)
  y = nnx.silu(z) if silu else z
  return y.astype(x.dtype), (x, scale, bias, mean, inv)


def _group_norm_bwd(num_groups, eps, silu, res, dy):
  del eps
  x, scale, bias, mean, inv = res
  b, c, nd = x.shape[0], x.shape[-1], x.ndim
  axes = tuple(range(1, nd - 1))
  n = x.size // (b * c) * (c // num_groups)
  xf, dy = x.astype(jnp.float32), dy.astype(jnp.float32)
  mean_c, inv_c = _per_channel(mean, c, nd), _per_channel(inv, c, nd)
  a = inv_c * scale
  if silu:  # recompute the pre-activation rather than storing it
    z = xf * a + (bias - mean_c * a)
    sig = jax.nn.sigmoid(z)
    dy = dy * (sig * (1 + z * (1 - sig)))
  # Per-(sample, channel) sums of dy and dy * x: everything else follows from them.
  t1 = jnp.sum(dy, axes)                                        # (B, C)
  t2 = jnp.sum(dy * xf, axes)
  flat = lambda v: v.reshape(b, c)
  t_xhat = (t2 - flat(mean_c) * t1) * flat(inv_c)              # sum of dy * xhat
  d_bias = jnp.sum(t1, 0)
  d_scale = jnp.sum(t_xhat, 0)
  group_sum = lambda v: (v * scale).reshape(b, num_groups, -1).sum(-1) / n
  c1 = _per_channel(group_sum(t1), c, nd)                       # mean of dxhat over the group
  c2 = _per_channel(group_sum(t_xhat), c, nd)                   # mean of dxhat * xhat
  # dx = inv * (dxhat - c1 - xhat * c2) with dxhat = dy * scale, xhat = (x - mean) * inv.
  dx = dy * a - xf * (inv_c * inv_c * c2) + inv_c * (inv_c * c2 * mean_c - c1)
  return dx.astype(x.dtype), d_scale, d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def group_norm(x, scale, bias, num_groups, eps=1e-6, silu=False):
  """GroupNorm of channels-last `x` (optionally followed by SiLU), float32 statistics.

  Hand-written forward and backward: the forward is one reduction pass (channel sums of x and
  x^2 over space) and one elementwise pass; the backward recomputes the normalised input
  instead of storing it and is again one reduction pass (channel sums of dy and dy * x) and one
  elementwise pass. On CPU this is several times faster than autodiff through `nnx.GroupNorm`.
  Returns `x.dtype`.
  """
  return _group_norm_fwd(x, scale, bias, num_groups, eps, silu)[0]


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nnx.Module):
  """GroupNorm (eps 1e-6, as MONAI) over channels-last inputs, optionally fused with SiLU."""

  def __init__(self, num_groups, num_features, *, eps=1e-6, silu=False, dtype=jnp.float32):
    if num_features % num_groups:
      raise ValueError(f"{num_features} channels are not divisible into {num_groups} groups")
    self.num_groups = num_groups
    self.eps = eps
    self.silu = silu
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.dtype = dtype

  def __call__(self, x):
    return group_norm(x.astype(self.dtype), self.scale[...], self.bias[...], self.num_groups,
                      self.eps, self.silu)


class ResBlock(nnx.Module):
  """Residual block with timestep conditioning (MONAI's `DiffusionUNetResnetBlock`)."""

  def __init__(self, spatial_dims, in_features, out_features, emb_features, *, num_groups,
               dropout=0.0, scale_shift=False, dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm1 = GroupNorm(num_groups, in_features, silu=True, dtype=dtype)
    self.conv1 = Conv(spatial_dims, in_features, out_features, dtype=dtype, rngs=rngs)
    self.scale_shift = scale_shift
    self.time_proj = Linear(emb_features, out_features * (2 if scale_shift else 1), dtype=dtype,
                            rngs=rngs)
    self.norm2 = GroupNorm(num_groups, out_features, silu=not scale_shift, dtype=dtype)
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.conv2 = Conv(spatial_dims, out_features, out_features, zero_init=True, dtype=dtype,
                      rngs=rngs)
    if in_features != out_features:
      self.skip = Conv(spatial_dims, in_features, out_features, 1, dtype=dtype, rngs=rngs)
    else:
      self.skip = None

  def __call__(self, x, emb):
    h = self.conv1(self.norm1(x))
    temb = self.time_proj(nnx.silu(emb))
    temb = temb.reshape((temb.shape[0],) + (1,) * (x.ndim - 2) + (temb.shape[-1],))
    if self.scale_shift:
      scale, shift = jnp.split(temb, 2, axis=-1)
      h = nnx.silu(self.norm2(h) * (1 + scale) + shift)
    else:
      h = self.norm2(h + temb)                                      # GroupNorm + SiLU
    if self.dropout is not None:
      h = self.dropout(h)
    h = self.conv2(h)
    skip = x if self.skip is None else self.skip(x)
    return skip.astype(h.dtype) + h


def _attention_fwd(q, k, v):
  # q, k, v: (B, heads, L, head_dim), q already scaled. Scores and softmax in float32.
  s = jnp.einsum("bnld,bnmd->bnlm", q, k, preferred_element_type=jnp.float32)
  p = jax.nn.softmax(s, axis=-1).astype(q.dtype)
  return jnp.einsum("bnlm,bnmd->bnld", p, v), (q, k, v, p)


def _attention_bwd(res, do):
  q, k, v, p = res
  dv = jnp.einsum("bnlm,bnld->bnmd", p, do)
  dp = jnp.einsum("bnld,bnmd->bnlm", do, v, preferred_element_type=jnp.float32)
  pf = p.astype(jnp.float32)
  ds = (pf * (dp - jnp.sum(dp * pf, axis=-1, keepdims=True))).astype(q.dtype)
  dq = jnp.einsum("bnlm,bnmd->bnld", ds, k)
  dk = jnp.einsum("bnlm,bnld->bnmd", ds, q)
  return dq, dk, dv


@jax.custom_vjp
def batched_attention(q, k, v):
  """softmax(q k^T) v over (B, heads, L, head_dim) arrays; `q` must be pre-scaled.

  A hand-written backward that keeps the probabilities from the forward pass and touches the
  (B, heads, L, L) tensors as few times as possible: on CPU it is about twice as fast as
  autodiff through `jax.nn.dot_product_attention`.
  """
  return _attention_fwd(q, k, v)[0]


batched_attention.defvjp(_attention_fwd, _attention_bwd)

# On a CPU, attention over L >= CPU_BLOCKED_MIN_LENGTH tokens runs one (slice, head) and at
# most CPU_QUERY_BLOCK queries at a time, so that its scores stay in cache instead of
# streaming (B, heads, L, L) floats through memory: 2-2.5x faster at L = 1024 (32x32
# tokens, the reference network on 128 px slices) on the 2-core machine. Shorter sequences
# and accelerators use `batched_attention` as it is.
CPU_BLOCKED_MIN_LENGTH = 512
CPU_QUERY_BLOCK = 1024


def blocked_attention(q, k, v, query_block=CPU_QUERY_BLOCK):
  """`batched_attention`, one (slice, head) and <= `query_block` queries at a time (lax.map)."""
  b, n, length, d = q.shape
  blocks = next(m for m in range(1, length + 1) if length % m == 0 and length // m <= query_block)
  rows = lambda x: x.reshape(b * n, 1, 1, length, d)

  def one_head(qkv):
    qh, kh, vh = qkv
    qs = qh.reshape(blocks, 1, 1, length // blocks, d)
    return jax.lax.map(lambda qb: batched_attention(qb, kh, vh), qs).reshape(1, 1, length, d)

  return jax.lax.map(one_head, (rows(q), rows(k), rows(v))).reshape(b, n, length, d)


def attention(q, k, v):
  """softmax(q k^T) v over (B, heads, L, head_dim) arrays; `q` must be pre-scaled."""
  if jax.default_backend() == "cpu" and q.shape[2] >= CPU_BLOCKED_MIN_LENGTH:
    return blocked_attention(q, k, v)
  return batched_attention(q, k, v)


class Attention(nnx.Module):
  """Spatial multi-head self-attention with a residual connection (MONAI's
  `SpatialAttentionBlock`)."""

  def __init__(self, features, *, num_head_channels, num_groups, dtype=jnp.float32,
               rngs: nnx.Rngs):
    if features % num_head_channels:
      raise ValueError(f"{features} channels are not divisible by num_head_channels "
                       f"{num_head_channels}")
    self.num_heads = features // num_head_channels
    self.norm = GroupNorm(num_groups, features, dtype=dtype)
    self.query = Linear(features, features, dtype=dtype, rngs=rngs)
    self.key = Linear(features, features, dtype=dtype, rngs=rngs)
    self.value = Linear(features, features, dtype=dtype, rngs=rngs)
    self.out = Linear(features, features, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x):
    b, c = x.shape[0], x.shape[-1]
    h = self.norm(x).reshape(b, -1, c)                                # (B, L, C)
    d = c // self.num_heads
    # (B, L, C) -> (B, heads, L, head_dim)
    heads = lambda y: y.reshape(b, -1, self.num_heads, d).transpose(0, 2, 1, 3)
    q = heads(self.query(h) * jnp.asarray(d ** -0.5, self.dtype))
    y = attention(q, heads(self.key(h)), heads(self.value(h)))
    y = y.transpose(0, 2, 1, 3).reshape(b, -1, c)
    return x.astype(self.dtype) + self.out(y).reshape(x.shape)


def upsample_nearest(x):
  """Nearest-neighbour x2 upsampling of every spatial axis of (B, *spatial, C)."""
  for axis in range(1, x.ndim - 1):
    x = jnp.repeat(x, 2, axis=axis)
  return x


def _apply_block(block, h, emb):
  """One U-Net block: its residual block, then its attention (if any)."""
  h = block["res"](h, emb)
  return h if block["attn"] is None else block["attn"](h)


class UNet(nnx.Module):
  """The diffusion U-Net; see the module docstring.

  Attributes follow MONAI's names where it matters for reading: `time_embed`, `conv_in`,
  `down` (per level: `res`, `attn`, `downsample`), `mid_*`, `up` (per level: `res`, `attn`,
  `upsample`), `out_norm`, `conv_out`.
  """

  def __init__(self, *, spatial_dims: int, in_channels: int, out_channels: int,
               channels: Sequence[int] = (32, 64, 128), num_res_blocks: int = 2,
               attention_levels: Sequence[bool] = (False, False, True),
               num_head_channels: int = 32, num_groups: int = 8, dropout: float = 0.0,
               scale_shift: bool = False, remat: bool = False, dtype=jnp.float32,
               rngs: nnx.Rngs):
    channels, attention_levels = tuple(channels), tuple(attention_levels)
    if len(channels) != len(attention_levels):
      raise ValueError(f"channels {channels} and attention_levels {attention_levels} differ in "
                       "length")
    self.spatial_dims = spatial_dims
    self.channels = channels
    self.remat = remat
    self.dtype = dtype
    emb_features = 4 * channels[0]
    res = lambda cin, cout: ResBlock(spatial_dims, cin, cout, emb_features,
                                     num_groups=num_groups, dropout=dropout,
                                     scale_shift=scale_shift, dtype=dtype, rngs=rngs)
    attn = lambda c: Attention(c, num_head_channels=num_head_channels, num_groups=num_groups,
                               dtype=dtype, rngs=rngs)
    conv = lambda cin, cout, **kw: Conv(spatial_dims, cin, cout, dtype=dtype, rngs=rngs, **kw)

    self.time_embed1 = Linear(channels[0], emb_features, dtype=dtype, rngs=rngs)
    self.time_embed2 = Linear(emb_features, emb_features, dtype=dtype, rngs=rngs)
    self.conv_in = conv(in_channels, channels[0])

    # Down path; `skips` tracks the width of every skip connection it leaves behind.
    skips = [channels[0]]
    down = []
    cin = channels[0]
    for level, (cout, use_attn) in enumerate(zip(channels, attention_levels)):
      blocks = []
      for _ in range(num_res_blocks):
        blocks.append(nnx.Dict(res=res(cin, cout), attn=attn(cout) if use_attn else None))
        cin = cout
        skips.append(cout)
      downsample = None
      if level < len(channels) - 1:
        downsample = conv(cout, cout, stride=2)
        skips.append(cout)
      down.append(nnx.Dict(blocks=nnx.List(blocks), downsample=downsample))
    self.down = nnx.List(down)

    self.mid_res1 = res(cin, cin)
    self.mid_attn = attn(cin)
    self.mid_res2 = res(cin, cin)

    # Up path: every block consumes one skip connection, the last one first.
    up = []
    for level in reversed(range(len(channels))):
      cout, use_attn = channels[level], attention_levels[level]
      blocks = []
      for _ in range(num_res_blocks + 1):
        blocks.append(nnx.Dict(res=res(cin + skips.pop(), cout),
                               attn=attn(cout) if use_attn else None))
        cin = cout
      upsample = conv(cout, cout) if level > 0 else None
      up.append(nnx.Dict(blocks=nnx.List(blocks), upsample=upsample))
    self.up = nnx.List(up)

    self.out_norm = GroupNorm(num_groups, channels[0], silu=True, dtype=dtype)
    self.conv_out = conv(channels[0], out_channels, zero_init=True)

  def __call__(self, x, t, injections=None, return_features=False):
    """`x` (B, *spatial, in_channels), `t` (B,) -> (B, *spatial, out_channels) float32.

    `injections`: optional per-level arrays added to the hidden state where each level
    of the down path starts (level l at 1/2^l of the input size, `channels[max(l-1, 0)]`
    wide, the width it starts with; None
    skips a level): how Diff-Ensembler's feature variant feeds 2D features into the 3D net.
    `return_features=True` also returns the last decoder features (B, *spatial,
    channels[0]), before the output normalisation and convolution.
    """
    if x.ndim != self.spatial_dims + 2:
      raise ValueError(f"expected a (B, {self.spatial_dims} spatial axes, C) input, got shape "
                       f"{x.shape}")
    t = jnp.broadcast_to(jnp.asarray(t), (x.shape[0],))
    emb = timestep_embedding(t, self.channels[0])
    emb = self.time_embed2(nnx.silu(self.time_embed1(emb)))

    apply = nnx.remat(_apply_block) if self.remat else _apply_block
    h = self.conv_in(x)
    skips = [h]
    for index, level in enumerate(self.down):
      if injections is not None and injections[index] is not None:
        h = h + injections[index].astype(h.dtype)
      for block in level["blocks"]:
        h = apply(block, h, emb)
        skips.append(h)
      if level["downsample"] is not None:
        h = level["downsample"](h)
        skips.append(h)

    h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)

    for level in self.up:
      for block in level["blocks"]:
        h = apply(block, jnp.concatenate([h, skips.pop().astype(h.dtype)], axis=-1), emb)
      if level["upsample"] is not None:
        h = level["upsample"](upsample_nearest(h))

    out = self.conv_out(self.out_norm(h)).astype(jnp.float32)
    return (out, h.astype(jnp.float32)) if return_features else out
