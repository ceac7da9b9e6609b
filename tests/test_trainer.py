"""The shared trainer: data parallel equals one device, exact resume, NaN stop, run outputs,
and a second task (a classifier with a frozen feature network) through the same loop."""

import json

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from sciimg_jax.core.errors import InputError
from sciimg_jax.core import slice_task
from sciimg_jax.inpainting import slice_inputs
from tolerances import float32_tolerance


def _params(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state.params))]


def _run_steps(config, task, devices, batches):
  mesh = sharding.make_mesh(devices)
  net, state, tx, lr = trainer.create_train_state(task, config, mesh)
  # Move away from the zero-initialised convolutions so every layer (and dropout) matters.
  # (numpy draws: a jax draw would compile once for every parameter shape)
  leaves, treedef = jax.tree.flatten(state.params)
  rng = np.random.default_rng(42)
  leaves = [np.asarray(x) + 0.05 * rng.standard_normal(x.shape, np.float32) for x in leaves]
  state = state.replace(params=jax.device_put(jax.tree.unflatten(treedef, leaves),
                                              sharding.replicated(mesh)))
  init = _params(state)
  step = trainer.make_train_step(task, net, tx, lr, config.optim.ema_decay, mesh)
  key = jax.random.key(0)
  metrics = []
  for batch in batches:
    state, m = step(state, sharding.shard_batch(batch, mesh), key, None)
    metrics.append({k: float(v) for k, v in m.items()})
  return state, init, metrics


def test_four_devices_match_one_device(tiny_config, tmp_path):
  assert jax.device_count() == 4
  tiny_config.model.dropout = 0.1  # dropout keys must not depend on the device count
  task = slice_task.SliceTask(tiny_config, tmp_path, slice_inputs.InpaintingSlices())
  rng = np.random.default_rng(0)
  h, w = tiny_config.data.image_size
  batches = [{"target": rng.uniform(-1, 1, (4, h, w, 1)).astype(np.float32),
              "cond": rng.uniform(-1, 1, (4, h, w, 2)).astype(np.float32)} for _ in range(3)]
  state1, init1, metrics1 = _run_steps(tiny_config, task, jax.devices()[:1], batches)
  state4, init4, metrics4 = _run_steps(tiny_config, task, jax.devices(), batches)
  leaf = jax.tree.leaves(state4.params)[0]
  assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated
  # the loss is a mean of 4*h*w positive terms, each gradient a sum over the same pixels,
  # added in another order on 4 devices than on 1: 2 * 4*h*w eps relative (a shard's loss: ~4%)
  rtol = float32_tolerance(1.0, 2 * 4 * h * w)
  for m1, m4 in zip(metrics1, metrics4):
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=rtol)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=rtol)
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


def _losses(workdir):
  return [json.loads(l)["loss"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
          if "loss" in l]


def test_resume_is_exact(tiny_config, tmp_path):
  """With the full inpainting recipe: every brain slice, random holes, in-mask loss weight."""
  tiny_config.train.eval_every = 0
  tiny_config.data.slices = "brain"
  tiny_config.data.random_masks.probability = 0.8
  tiny_config.train.loss_weight_in_mask = 4.0
  straight = slice_inputs.train_slice_model(tiny_config, tmp_path / "straight")
  slice_inputs.train_slice_model(tiny_config, tmp_path / "resumed", stop_at_step=2)
  assert (tmp_path / "resumed" / "checkpoints" / "2").is_dir()
  assert not (tmp_path / "resumed" / "checkpoints" / "4").exists()
  resumed = slice_inputs.train_slice_model(tiny_config, tmp_path / "resumed")
  assert int(straight.step) == int(resumed.step) == 4
  for a, b in zip(_params(straight), _params(resumed)):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(straight.opt_state), jax.tree.leaves(resumed.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for a, b in zip(jax.tree.leaves(straight.ema_params), jax.tree.leaves(resumed.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")


def test_run_writes_outputs(tiny_config, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path.parent)  # a relative workdir, as in the README's command
  state = slice_inputs.train_slice_model(tiny_config, tmp_path.name)
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
  tiny_config.train.eval_every = 0
  with pytest.raises(FloatingPointError, match=r"loss is nan at step 2"):
    slice_inputs.train_slice_model(tiny_config, tmp_path)
  assert not (tmp_path / "checkpoints" / "2").exists()  # nothing non-finite is checkpointed


def test_in_channels_must_match_conditions(tiny_config, tmp_path):
  tiny_config.model.in_channels = 5
  with pytest.raises(InputError, match="model.in_channels"):
    slice_inputs.train_slice_model(tiny_config, tmp_path)


def test_in_mask_loss_weight_is_checked(tiny_config):
  tiny_config.train.loss_weight_in_mask = 0.0
  with pytest.raises(InputError, match="train.loss_weight_in_mask: must be > 0, got 0.0"):
    slice_task.check_config(tiny_config, slice_inputs.InpaintingSlices())
  tiny_config.train.loss_weight_in_mask = 5.0
  tiny_config.data.conditions = ("t1n-voided",)
  tiny_config.train.eval_every = 0
  with pytest.raises(InputError, match="needs 'mask' among data.conditions"):
    slice_task.check_config(tiny_config, slice_inputs.InpaintingSlices())


def test_negative_clip_x0_is_refused(tiny_config):
  tiny_config.sampling.clip_x0 = -0.5
  with pytest.raises(InputError, match="sampling.clip_x0: must be >= 0"):
    slice_task.check_config(tiny_config, slice_inputs.InpaintingSlices())


# --- a second task: a classifier on random data, through the same loop ----------------


class Classifier(nnx.Module):
  """A two-layer MLP over the frozen features."""

  def __init__(self, features, classes, *, rngs, dtype=jnp.float32):
    self.hidden = nnx.Linear(features, 16, rngs=rngs, dtype=dtype)
    self.out = nnx.Linear(16, classes, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


class ArraySource:
  """A grain random-access source over in-memory arrays."""

  def __init__(self, x, y):
    self.x, self.y = x, y

  def __len__(self):
    return len(self.y)

  def __getitem__(self, i):
    return {"x": self.x[i], "label": self.y[i]}

  def __repr__(self):  # grain checks that a restored iterator reads the same source
    return f"ArraySource(n={len(self.y)}, sum={float(self.x.sum()):.6f})"


class ClassifierTask:
  """Separable 3-class points, seen through a frozen random feature map (tanh(x W))."""

  def __init__(self, seed=0, num=96, dims=5, features=8, classes=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 3.0
    y = rng.integers(0, classes, num).astype(np.int32)
    x = (centres[y] + rng.normal(size=(num, dims))).astype(np.float32)
    self.train_source = ArraySource(x[:64], y[:64])
    self.eval_x, self.eval_y = x[64:], y[64:]
    self.projection = rng.normal(size=(dims, features)).astype(np.float32)
    self.features, self.classes, self.seed = features, classes, seed

  def create_model(self, rngs, dtype):
    return Classifier(self.features, self.classes, rngs=rngs, dtype=dtype)

  def frozen_params(self, mesh):
    return {"projection": jnp.asarray(self.projection)}

  def loss(self, model, batch, key, frozen):
    logits = model(jnp.tanh(batch["x"] @ frozen["projection"]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, {"train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def train_iterator(self, batch_size_per_process):
    sampler = grain.samplers.IndexSampler(
        num_records=len(self.train_source), shard_options=grain.sharding.NoSharding(),
        shuffle=True, num_epochs=None, seed=self.seed)
    return iter(grain.DataLoader(
        data_source=self.train_source, sampler=sampler,
        operations=[grain.transforms.Batch(batch_size_per_process, drop_remainder=True)]))

  def evaluate(self, net, params, frozen, step, key, workdir):
    logits = net(params, jnp.tanh(self.eval_x @ frozen["projection"]))
    return {"eval_accuracy": float(np.mean(np.argmax(np.asarray(logits), -1) == self.eval_y))}


def classifier_config(num_steps=60):
  c = base.get_base_config()
  c.job = "test_classifier"
  c.data.batch_size = 8
  c.optim.learning_rate = 0.05
  c.optim.warmup_steps = 5
  c.optim.ema_decay = 0.9
  c.train.update(dict(num_steps=num_steps, compute_dtype="float32", log_every=10,
                      checkpoint_every=20, eval_every=30, progress_bar=False))
  c.model = ml_collections.ConfigDict(dict(name="test_classifier"))
  return c


def test_second_task_trains_and_resumes_exactly(tmp_path):
  config = classifier_config()
  straight = trainer.train(ClassifierTask(), config, tmp_path / "straight")
  trainer.train(ClassifierTask(), config, tmp_path / "resumed", stop_at_step=20)
  with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:  # rows of a run killed at 35
    f.write('{"step": 30, "loss": 123.0}\n{"step": 35, "lo')
  resumed = trainer.train(ClassifierTask(), config, tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves((straight.params, straight.ema_params, straight.opt_state)),
                  jax.tree.leaves((resumed.params, resumed.ema_params, resumed.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")  # one row per step
  rows = [json.loads(l) for l in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in rows if "loss" in r]
  accuracy = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
  assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
  assert len(accuracy) == 2 and accuracy[-1] >= 0.9, accuracy  # chance is 1/3


def test_inference_restores_only_ema(tmp_path):
  config = classifier_config(num_steps=20)
  state = trainer.train(ClassifierTask(), config, tmp_path)
  from sciimg_jax.core import checkpoint
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
  mesh = sharding.make_mesh()
  ema = ckpt.restore_ema(checkpoint.abstract_like(state.ema_params, sharding.replicated(mesh)))
  ckpt.close()
  for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state.ema_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not any(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                 zip(jax.tree.leaves(ema), jax.tree.leaves(state.params)))


# --- gradient accumulation and the memory check ----------------------------------------


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)


@pytest.mark.parametrize("devices,k", [(1, 4), (4, 2)])
def test_gradient_accumulation_equals_the_whole_batch(devices, k):
  """k micro-batches make the whole batch's update (plain SGD: update = -lr * gradient)."""
  task, config, lr = ClassifierTask(), classifier_config(), 0.1
  mesh = sharding.make_mesh(jax.devices()[:devices])
  net, state, _, _ = trainer.create_train_state(task, config, mesh)
  tx = optax.sgd(lr)
  state = state.replace(opt_state=jax.device_put(tx.init(state.params), sharding.replicated(mesh)))
  frozen = jax.device_put(task.frozen_params(mesh), sharding.replicated(mesh))
  batch = {"x": task.train_source.x[:8], "label": task.train_source.y[:8]}
  key = jax.random.key(0)
  out = {}
  for steps in (1, k):
    step = trainer.make_train_step(task, net, tx, lambda s: lr, 0.9, mesh, steps)
    out[steps] = step(_copy(state), sharding.shard_batch(batch, mesh), key, frozen)
  # Rounding: each gradient entry sums 8 per-example terms (in another grouping with k
  # micro-batches), each made by the MLP's backward pass (fan-in 16 + 8); both sides float32.
  model = net.module(state.params)
  per_example = [nnx.grad(lambda m: task.loss(m, {"x": batch["x"][i:i + 1],
                                                  "label": batch["label"][i:i + 1]},
                                              key, frozen)[0])(model) for i in range(8)]
  magnitude = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(per_example))
  atol = lr * float32_tolerance(magnitude, 2 * (8 + 16 + 8))
  moved = 0.0
  for a, b, p in zip(jax.tree.leaves(out[1][0].params), jax.tree.leaves(out[k][0].params),
                     jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=atol)
    moved = max(moved, float(jnp.abs(a - p).max()))
  assert moved > 1e3 * atol  # the step moved the parameters far more than the tolerance
  # the logged loss is the mean of the micro-batches' means: the whole batch's mean
  np.testing.assert_allclose(float(out[k][1]["loss"]), float(out[1][1]["loss"]),
                             rtol=float32_tolerance(1.0, 2 * (8 + 16)))
  # the two gradients are within atol / lr per entry (above), so their norms within sqrt(n) of
  # that; each norm also sums n squares (relative: n eps)
  n = sum(p.size for p in jax.tree.leaves(state.params))
  norm = float(out[1][1]["grad_norm"])
  np.testing.assert_allclose(float(out[k][1]["grad_norm"]), norm, rtol=0,
                             atol=np.sqrt(n) * atol / lr + float32_tolerance(norm, 2 * n))


def test_accumulation_trains_and_resumes_exactly(tmp_path):
  config = classifier_config(num_steps=40)
  config.optim.accumulate_steps = 2
  straight = trainer.train(ClassifierTask(), config, tmp_path / "straight")
  trainer.train(ClassifierTask(), config, tmp_path / "resumed", stop_at_step=20)
  resumed = trainer.train(ClassifierTask(), config, tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves((straight.params, straight.ema_params)),
                  jax.tree.leaves((resumed.params, resumed.ema_params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses = _losses(tmp_path / "straight")
  assert len(losses) == 4 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("k,match", [(0, "whole number >= 1"), (-1, "whole number >= 1"),
                                     (4, "do not split evenly")])
def test_bad_accumulation_is_refused(k, match, tmp_path):
  config = classifier_config()  # batch 8 on 4 devices: 2 per device
  config.optim.accumulate_steps = k
  with pytest.raises(InputError, match=f"optim.accumulate_steps: .*{match}"):
    trainer.train(ClassifierTask(), config, tmp_path)


def test_memory_check_stops_before_the_first_step(tmp_path, monkeypatch):
  from sciimg_jax.core import memory
  monkeypatch.setattr(memory, "device_bytes", lambda device=None: 4096)
  with pytest.raises(InputError, match=r"needs [0-9.]+ GiB per device and the device has 0\.0 "
                     r"GiB; lower it with optim.accumulate_steps .*model.remat"):
    trainer.train(ClassifierTask(), classifier_config(), tmp_path)
  assert not list((tmp_path / "checkpoints").glob("*"))
  assert not (tmp_path / "metrics.jsonl").exists() or not _losses(tmp_path)


def test_compiled_bytes_counts_arguments_outputs_and_temporaries():
  from sciimg_jax.core import memory
  x = jnp.ones((256, 256), jnp.float32)
  plain = jax.jit(lambda x: (x * 2, x + 1)).lower(x).compile()
  assert memory.compiled_bytes(plain) >= 3 * x.nbytes  # one argument, two outputs
  donated = jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile()
  assert memory.compiled_bytes(donated) < 2 * x.nbytes  # the output reuses the argument
  assert memory.check_fits(plain, "f", "knobs", available=10 * x.nbytes)[0] >= 3 * x.nbytes
  with pytest.raises(InputError, match="f: the compiled step needs .* lower it with knobs"):
    memory.check_fits(plain, "f", "knobs", available=x.nbytes)


def test_the_ema_schedule_of_the_released_code():
  """ema_start=3, ema_every=2: the EMA is the parameters after steps 0 and 2, moves by the
  decay after step 4 only, and stays put after the odd steps (plain SGD, 6 steps)."""
  task, config = ClassifierTask(), classifier_config()
  mesh = sharding.make_mesh(jax.devices()[:1])
  net, state, _, _ = trainer.create_train_state(task, config, mesh)
  tx, decay = optax.sgd(0.1), 0.5
  state = state.replace(opt_state=jax.device_put(tx.init(state.params), sharding.replicated(mesh)))
  step = trainer.make_train_step(task, net, tx, lambda s: 0.1, decay, mesh, ema_start=3,
                                 ema_every=2)
  batch = sharding.shard_batch({"x": task.train_source.x[:8],
                                "label": task.train_source.y[:8]}, mesh)
  frozen = jax.device_put(task.frozen_params(mesh), sharding.replicated(mesh))
  expected = _params(state)
  for s in range(6):
    state, _ = step(state, batch, jax.random.key(0), frozen)
    params = _params(state)
    if s % 2 == 0:
      expected = params if s < 3 else [decay * e + (1 - decay) * p
                                       for e, p in zip(expected, params)]
    for e, got, p in zip(expected, [np.asarray(x) for x in jax.tree.leaves(state.ema_params)],
                         params):
      # one multiply-add per entry on values of the parameters' size
      np.testing.assert_allclose(got, e, rtol=0, atol=float32_tolerance(np.abs(p).max() + 1, 4))
  assert max(float(np.abs(e - p).max()) for e, p in zip(expected, params)) > 1e-4
  c = classifier_config()
  c.optim.ema_every = 0
  with pytest.raises(InputError, match="optim.ema_every: must be a whole number >= 1, got 0"):
    trainer.check_config(c)
