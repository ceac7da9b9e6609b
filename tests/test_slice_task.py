"""The core slice task's objectives (L1 regression, segmentation) and checks, with the
ensembler's per-direction inputs."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.ensembler import slice_model
from sciimg_jax.core import models
from sciimg_jax.core import sharding
from sciimg_jax.core import trained_models
from sciimg_jax.core.errors import InputError
from sciimg_jax.core import slice_task
from sciimg_jax.ensembler import slice_inputs
from sciimg_jax.ensembler import translator
from tolerances import float32_tolerance


def derived(config):
  """`config` with the input channels the slice task derives for the ensembler's inputs."""
  return slice_task.with_in_channels(config, slice_inputs.VolumeSlices())


def fresh(config):
  """A fresh (zero-output) network of `config` and a task stand-in for its loss."""
  module = models.create_model(derived(config).model, rngs=nnx.Rngs(0))
  return module, types.SimpleNamespace(config=config, schedule=None)


def batch(config, rng, labels=False):
  c = len(config.data.conditions) + 4
  target = (rng.uniform(size=(2, 8, 8, 1)) > 0.7).astype(np.float32) if labels else \
      rng.uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
  return {"target": jnp.asarray(target),
          "cond": jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, c)), jnp.float32)}


def test_regression_is_l1_and_segmentation_is_bce_plus_soft_dice():
  rng = np.random.default_rng(0)
  c = slice_model.get_config("t1_to_flair+regressor+tiny")
  module, task = fresh(c)
  b = batch(c, rng)
  loss = OBJ(c)(task, module, b, jax.random.key(0))
  # output is 0; a float32 mean of 128 terms of one sign, in XLA and in numpy: 2 * 128 eps relative
  np.testing.assert_allclose(loss, np.mean(np.abs(b["target"])),
                             rtol=float32_tolerance(1.0, 2 * 128))

  c = slice_model.get_config("sr+segmenter+tiny")
  module, task = fresh(c)
  b = batch(c, rng, labels=True)
  loss = OBJ(c)(task, module, b, jax.random.key(0))
  g = np.asarray(b["target"])
  dice = 1 - (2 * 0.5 * g.sum() + 1) / (0.5 * g.size + g.sum() + 1)  # sigmoid(0) = 0.5
  # float64 reference; the loss: a mean of 128 BCE terms and dice's 128-term sums, all <= 1
  np.testing.assert_allclose(loss, np.log(2.0) + dice, rtol=0, atol=float32_tolerance(1.0, 3 * 128))


def OBJ(config):
  return slice_task.OBJECTIVES[config.train.objective].loss


@pytest.mark.parametrize("change,key", [
    (lambda c: setattr(c.model, "in_channels", 4), "model.in_channels"),
    (lambda c: setattr(c.train, "objective", "gan"), "train.objective"),
    (lambda c: c.data.update(dict(target="mask-unhealthy", residual=False)), "data.target"),
    (lambda c: setattr(c.data, "target", "mask-unhealthy"), "data.residual"),
])
def test_bad_settings_name_their_key(change, key):
  c = slice_model.get_config("sr+tiny")
  change(c)
  with pytest.raises(InputError, match=key):
    slice_task.check_config(c, slice_inputs.VolumeSlices())


def test_deterministic_networks_run_slice_by_slice_over_a_volume():
  mesh = sharding.make_mesh()
  c = slice_model.get_config("sr+segmenter+tiny")
  seg = trained_models.restore(derived(c), mesh)
  cond = np.random.default_rng(1).uniform(-1, 1, (8, 8, 8, 5)).astype(np.float32)
  np.testing.assert_array_equal(translator.slicewise_network(seg, c.data, cond, 8, mesh), 0.5)
  r = slice_model.get_config("sr+regressor+tiny")  # residual: the image is 2 * 0 + condition
  reg = trained_models.restore(derived(r), mesh)
  np.testing.assert_allclose(translator.slicewise_network(reg, r.data, cond, 8, mesh),
                             cond[..., 0], atol=1e-6)


def test_sigma_data_is_the_rms_of_the_generated_targets():
  """`measure_sigma_data` = sqrt(sum w t^2 / sum w) over the first batches, with the
  method's generated-pixel weights (all pixels where it gives None)."""
  rng = np.random.default_rng(0)
  batches = [{"target": rng.normal(0, 0.2, (4, 6, 6, 1)).astype(np.float32),
              "mask": (rng.uniform(size=(4, 6, 6, 1)) < 0.3).astype(np.float32)}
             for _ in range(3)]

  class Inputs:
    def __init__(self, weighted):
      self.weighted = weighted

    def train_batches(self, config, source, batch_size):
      return iter(batches)

    def generated(self, config, batch):
      return batch["mask"] if self.weighted else None

  config = types.SimpleNamespace(data=types.SimpleNamespace(batch_size=4))
  t = np.stack([b["target"] for b in batches]).astype(np.float64)
  m = np.stack([b["mask"] for b in batches]).astype(np.float64)
  got = slice_task.measure_sigma_data(config, Inputs(True), None, num_batches=3)
  # float64 sums of 432 terms against the same in another order
  assert got == pytest.approx(np.sqrt((m * t**2).sum() / m.sum()), rel=1e-12)
  got = slice_task.measure_sigma_data(config, Inputs(False), None, num_batches=3)
  assert got == pytest.approx(np.sqrt(np.mean(t**2)), rel=1e-12)
  for b in batches:
    b["mask"][:] = 0
  with pytest.raises(InputError, match="diffusion.sigma_data.*cannot be measured"):
    slice_task.measure_sigma_data(config, Inputs(True), None, num_batches=3)
