"""Shared fixtures. Four fake CPU devices so data-parallel code runs sharded in tests.

Compiled programs go to JAX's persistent compilation cache in `.pytest_cache/jax` (shared
by the xdist workers and the `main.py` subprocesses of the tests): many tests train the
same tiny networks, and a program compiled once is read back instead of compiled again.

Random numbers use JAX's non-partitionable threefry in tests (`JAX_THREEFRY_PARTITIONABLE=0`).
It gives the same values on one device or four, as the partitionable default does, but
jaxlib 0.10 compiles it ~10x faster on CPU: the partitionable one took 3-9 s to compile
for each new shape of a random draw, the non-partitionable one 0.4-0.6 s (a tiny 3D
U-Net's initialisation: 77 s against 20 s on the same busy cores), a large share of the
suite's time.
"""

import os
import pathlib

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

from sciimg_jax.core import xla_flags  # noqa: E402

xla_flags.set_cpu_flags()

import pytest  # noqa: E402

from configs import base  # noqa: E402


# The longest modules, longest first. With `--dist loadfile` (pyproject.toml) a worker takes
# the next module when it is free, so starting with the long ones balances the two workers
# (longest-processing-time-first). test_main and test_volume_inpainter both train
# `slice_model_dirs`; apart in the list, the second reads the first's compiled programs from
# the compilation cache instead of compiling them at the same time on the other worker.
LONGEST_MODULES = ("test_multiprocess", "test_ensembler_pipeline", "test_main", "test_trainer", "test_volume_inpainter",
                   "test_notebook", "test_ir_classifier", "test_unet")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order after


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
  """One folder for the embedded data and TFDS slices, shared by the tests of a worker."""
  return tmp_path_factory.mktemp("data_cache")


@pytest.fixture
def tiny_config(data_cache):
  """The tiny axial inpainting config, with the shared data cache."""
  from configs.inpainting import axial as inpaint_axial
  c = inpaint_axial.get_config("tiny")
  c.data.cache_dir = str(data_cache)
  return c


@pytest.fixture(scope="session")
def slice_model_dirs(data_cache, tmp_path_factory):
  """Workdirs of tiny axial and coronal inpainting models trained for a few steps.

  Slices are 64x64 so that whole 4 mm volumes (50x59x48) fit: volume shape 64^3.
  """
  from configs.inpainting import axial as inpaint_axial, coronal as inpaint_coronal
  from sciimg_jax.inpainting import slice_inputs
  dirs = {}
  for name, module in (("axial", inpaint_axial), ("coronal", inpaint_coronal)):
    c = module.get_config("tiny")
    c.data.cache_dir = str(data_cache)
    c.data.image_size = (64, 64)
    c.train.eval_every = 0
    dirs[name] = tmp_path_factory.mktemp(f"{name}_model")
    slice_inputs.train_slice_model(c, dirs[name])
  return dirs
