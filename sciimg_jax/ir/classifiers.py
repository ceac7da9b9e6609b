"""Patch classifiers for IR cubes and RGB images (Flax NNX), registered in the core registry.

Input: a batch of patches (N, p, p, C) (C = bands for IR, 3 for RGB); output: class logits
of the centre pixel. `embed` gives the penultimate features the diagnostics look at.

  spectral_pixel    an MLP over the centre pixel's spectrum (the per-pixel spectral model
                    chemometrics uses; the patch context is ignored)
  spectral_spatial  a spectral encoder (1x1 convolutions over bands) followed by the
                    spatial trunk over the patch
  spatial           the spatial trunk on the input channels as they are (RGB, or IR bands
                    fed straight to 3x3 convolutions)
  spectral_cnn      a 1D CNN over the band axis of the centre pixel's spectrum: convolution
                    blocks along the bands (stride 2, GroupNorm, GELU), the map flattened
                    (where along the axis a band is, is its chemistry: no pooling), a dense
                    layer (the features); the patch context is ignored

The spatial trunk is 3x3 convolution blocks (GroupNorm, GELU), one stride-2 block per
level after the first, and a dense layer over the flattened map (the penultimate features),
then a linear head, so the IR and RGB models differ only in what comes before the trunk.
"""

from flax import nnx
import jax.numpy as jnp

from sciimg_jax.core import models


def _groups(channels, num_groups):
  return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


class SpectralEncoder(nnx.Module):
  """1x1 convolutions over the bands: C -> widths[-1] channels, GELU between."""

  def __init__(self, in_channels, widths, *, rngs, dtype=jnp.float32):
    chans = (in_channels,) + tuple(widths)
    self.layers = nnx.List([nnx.Conv(a, b, (1, 1), dtype=dtype, rngs=rngs)
                            for a, b in zip(chans[:-1], chans[1:])])

  def __call__(self, x):
    for k, layer in enumerate(self.layers):
      x = layer(x)
      if k < len(self.layers) - 1:
        x = nnx.gelu(x)
    return x


class SpatialTrunk(nnx.Module):
  """3x3 conv blocks (stride 2 from the second level), then a dense layer over the flattened map.

  Flattening keeps where in the patch a feature is, so the centre pixel's class can be told
  from its neighbours' (global average pooling would answer with the patch's majority class).
  """

  def __init__(self, in_channels, widths, *, patch_size, features=64, num_groups=8, rngs,
               dtype=jnp.float32):
    self.convs, self.norms = nnx.List(), nnx.List()
    prev, size = in_channels, patch_size
    for k, width in enumerate(widths):
      stride = 1 if k == 0 else 2
      self.convs.append(nnx.Conv(prev, width, (3, 3), strides=(stride, stride), dtype=dtype,
                                 rngs=rngs))
      self.norms.append(nnx.GroupNorm(width, num_groups=_groups(width, num_groups), dtype=dtype,
                                      rngs=rngs))
      prev, size = width, -(-size // stride)
    self.dense = nnx.Linear(prev * size * size, features, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.gelu(norm(conv(x)))
    return nnx.gelu(self.dense(x.reshape(x.shape[0], -1)))


class PatchClassifier(nnx.Module):
  """Optional spectral encoder, then the spatial trunk (or an MLP on the centre pixel)."""

  def __init__(self, in_channels, num_classes, *, patch_size=None, spectral_widths=(),
               trunk_widths=(32, 64), features=64, pixel_only=False, num_groups=8, rngs,
               dtype=jnp.float32):
    self.pixel_only = pixel_only
    self.encoder = (SpectralEncoder(in_channels, spectral_widths, rngs=rngs, dtype=dtype)
                    if spectral_widths else None)
    channels = spectral_widths[-1] if spectral_widths else in_channels
    if pixel_only:
      self.trunk = None
    else:
      self.trunk = SpatialTrunk(channels, trunk_widths, patch_size=patch_size, features=features,
                                num_groups=num_groups, rngs=rngs, dtype=dtype)
    self.out_features = channels if pixel_only else features
    self.head = nnx.Linear(self.out_features, num_classes, dtype=dtype, rngs=rngs)

  def embed(self, x):
    """(N, features): the penultimate representation of patches (N, p, p, C)."""
    if self.pixel_only:
      p = x.shape[1] // 2
      x = x[:, p:p + 1, p:p + 1]  # the centre pixel, as the patch's centre is defined
    if self.encoder is not None:
      x = self.encoder(x)
    if self.pixel_only:
      return nnx.gelu(x[:, 0, 0])
    return self.trunk(x)

  def __call__(self, x):
    return self.head(self.embed(x))


class SpectralCNN(nnx.Module):
  """A 1D CNN over the bands of the centre pixel's spectrum (module docstring)."""

  def __init__(self, in_channels, num_classes, *, widths=(16, 32, 64), kernel_size=7,
               features=64, num_groups=8, rngs, dtype=jnp.float32):
    self.convs, self.norms = nnx.List(), nnx.List()
    prev, length = 1, in_channels
    for width in widths:
      self.convs.append(nnx.Conv(prev, width, (kernel_size,), strides=(2,), dtype=dtype,
                                 rngs=rngs))
      self.norms.append(nnx.GroupNorm(width, num_groups=_groups(width, num_groups), dtype=dtype,
                                      rngs=rngs))
      prev, length = width, -(-length // 2)
    self.dense = nnx.Linear(prev * length, features, dtype=dtype, rngs=rngs)
    self.out_features = features
    self.head = nnx.Linear(features, num_classes, dtype=dtype, rngs=rngs)

  def embed(self, x):
    """(N, features) of patches (N, p, p, bands): of the centre pixel's spectrum only."""
    p = x.shape[1] // 2
    x = x[:, p, p, :, None]  # (N, bands, 1): the bands are the convolution's axis
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.gelu(norm(conv(x)))
    return nnx.gelu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, x):
    return self.head(self.embed(x))


def spectral_cnn(*, in_channels, num_classes, patch_size=None, widths=(16, 32, 64), kernel_size=7,
                 features=64, num_groups=8, rngs, dtype=jnp.float32):
  del patch_size  # the centre pixel only
  return SpectralCNN(in_channels, num_classes, widths=widths, kernel_size=kernel_size,
                     features=features, num_groups=num_groups, rngs=rngs, dtype=dtype)


def spectral_pixel(*, in_channels, num_classes, patch_size=None, spectral_widths=(128, 64), rngs,
                   dtype=jnp.float32):
  del patch_size  # the centre pixel only
  return PatchClassifier(in_channels, num_classes, spectral_widths=spectral_widths,
                         pixel_only=True, rngs=rngs, dtype=dtype)


def spectral_spatial(*, in_channels, num_classes, patch_size, spectral_widths=(64, 16),
                     trunk_widths=(32, 64), features=64, num_groups=8, rngs, dtype=jnp.float32):
  return PatchClassifier(in_channels, num_classes, patch_size=patch_size,
                         spectral_widths=spectral_widths, trunk_widths=trunk_widths,
                         features=features, num_groups=num_groups, rngs=rngs, dtype=dtype)


def spatial(*, in_channels, num_classes, patch_size, trunk_widths=(32, 64), features=64,
            num_groups=8, rngs, dtype=jnp.float32):
  return PatchClassifier(in_channels, num_classes, patch_size=patch_size,
                         trunk_widths=trunk_widths, features=features, num_groups=num_groups,
                         rngs=rngs, dtype=dtype)


for _name, _fn in (("spectral_pixel", spectral_pixel), ("spectral_spatial", spectral_spatial),
                   ("spatial", spatial), ("spectral_cnn", spectral_cnn)):
  models.register(_name, _fn)
