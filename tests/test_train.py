"""Training: data parallel equals single device, exact resume, NaN stop, run outputs."""

import json

import jax
import numpy as np
import pytest

from sciimg_jax import sharding
from sciimg_jax import train


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _run_steps(config, devices, batches):
  mesh = sharding.make_mesh(devices)
  graphdef, rest, state, tx, lr = train.create_train_state(config, mesh)
  # Move away from the zero-initialised convolutions so every layer (and dropout) matters.
  leaves, treedef = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(42), len(leaves))
  leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
  state = state.replace(params=jax.device_put(jax.tree.unflatten(treedef, leaves),
                                              sharding.replicated(mesh)))
  init = _params(state)
  step = train.make_train_step(config, graphdef, rest, tx, lr, mesh)
  key = jax.random.key(0)
  metrics = []
  for batch in batches:
    state, m = step(state, sharding.shard_batch(batch, mesh), key)
    metrics.append({k: float(v) for k, v in m.items()})
  return state, init, metrics


def test_four_devices_match_one_device(tiny_config):
  assert jax.device_count() == 4
  tiny_config.model.dropout = 0.1  # dropout keys must not depend on the device count
  rng = np.random.default_rng(0)
  h, w = tiny_config.data.image_size
  batches = [{"target": rng.uniform(-1, 1, (4, h, w, 1)).astype(np.float32),
              "cond": rng.uniform(-1, 1, (4, h, w, 2)).astype(np.float32)} for _ in range(3)]
  state1, init1, metrics1 = _run_steps(tiny_config, jax.devices()[:1], batches)
  state4, init4, metrics4 = _run_steps(tiny_config, jax.devices(), batches)
  leaf = jax.tree.leaves(state4.params)[0]
  assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
  for m1, m4 in zip(metrics1, metrics4):
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
  # Parameter updates agree to float tolerance. (Adam divides by sqrt(v), so the
  # few weights whose gradients are ~0 can move differently by a fraction of a
  # step; a sharding bug, e.g. gradients of one shard only, gives errors ~100%.)
  for a0, b0 in zip(init1, init4):
    np.testing.assert_array_equal(a0, b0)
  flat = lambda ps: np.concatenate([p.ravel().astype(np.float64) for p in ps])
  d1 = flat(_params(state1)) - flat(init1)
  d4 = flat(_params(state4)) - flat(init4)
  assert np.linalg.norm(d4 - d1) <= 1e-2 * np.linalg.norm(d1), np.linalg.norm(d4 - d1) / np.linalg.norm(d1)
  assert int(state4.step) == 3


def test_resume_is_exact(tiny_config, tmp_path):
  tiny_config.train.sample_every = 0
  straight = train.train_and_evaluate(tiny_config, tmp_path / "straight")
  train.train_and_evaluate(tiny_config, tmp_path / "resumed", stop_at_step=2)
  assert (tmp_path / "resumed" / "checkpoints" / "2").is_dir()
  assert not (tmp_path / "resumed" / "checkpoints" / "4").exists()
  resumed = train.train_and_evaluate(tiny_config, tmp_path / "resumed")
  assert int(straight.step) == int(resumed.step) == 4
  for a, b in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(straight.opt_state), jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses = lambda d: [json.loads(l)["loss"] for l in (d / "metrics.jsonl").read_text().splitlines()]
  assert losses(tmp_path / "straight") == losses(tmp_path / "resumed")


def test_run_writes_outputs(tiny_config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path.parent)  # a relative workdir, as in the README's command
  state = train.train_and_evaluate(tiny_config, tmp_path.name)
  assert int(state.step) == tiny_config.train.num_steps
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "loss" in r] == [2, 4]
  assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
  assert any("sample_mse_in_mask" in r for r in rows)
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert (tmp_path / "samples" / "step_0000004.png").stat().st_size > 1000
  assert json.loads((tmp_path / "config.json").read_text())["model"]["channels"] == [8, 16]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]


def test_nan_loss_stops_with_message(tiny_config, tmp_path):
  tiny_config.optim.learning_rate = float("nan")
  tiny_config.train.sample_every = 0
  with pytest.raises(FloatingPointError, match=r"loss is nan at step 2"):
    train.train_and_evaluate(tiny_config, tmp_path)


def test_in_channels_must_match_conditions(tiny_config, tmp_path):
  tiny_config.model.in_channels = 5
  with pytest.raises(ValueError, match="model.in_channels"):
    train.train_and_evaluate(tiny_config, tmp_path)
