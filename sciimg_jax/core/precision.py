"""The networks' compute dtype (`train.compute_dtype`), for training and inference alike."""

import jax
import jax.numpy as jnp

from sciimg_jax.core.errors import InputError


def compute_dtype(config):
  """The network's compute dtype; 'auto' is bfloat16 on GPU/TPU and float32 on CPU."""
  name = config.train.compute_dtype
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if name not in ("float32", "bfloat16", "float16"):
    raise InputError("train.compute_dtype", f"unknown dtype {name!r}")
  return jnp.dtype(name)
