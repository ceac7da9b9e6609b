"""Shared fixtures. Four fake CPU devices so data-parallel code runs sharded in tests."""

import os

# Must happen before JAX is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=4").strip()

import pytest  # noqa: E402

from configs import base  # noqa: E402


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
  """One folder for the embedded data and TFDS slices, shared by the tests of a worker."""
  return tmp_path_factory.mktemp("data_cache")


@pytest.fixture
def tiny_config(data_cache):
  """The tiny axial inpainting config, with the shared data cache."""
  from configs import inpaint_axial
  c = inpaint_axial.get_config("tiny")
  c.data.cache_dir = str(data_cache)
  return c
