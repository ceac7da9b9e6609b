"""The training loop every method shares: sharded jitted step, optax, EMA, checkpoints.

A method hands `train(task, config, workdir)` a task (the `Task` protocol below): how
to build its network, which parameters it uses without training them, its loss on a
batch, its training batches and its evaluation. The loop owns the rest:

  * a pure train step under `jax.jit` over a 1D device mesh: the batch is split on
    'data', parameters, optimiser state and EMA are replicated; the state is donated;
  * optax AdamW with warmup, cosine decay and global-norm clipping; an EMA of the
    parameters (what evaluation and inference use);
  * orbax checkpoints of state, EMA, data-iterator state and config, and exact resume:
    a run stopped at any checkpoint and started again is the uninterrupted run;
  * gradient accumulation over micro-batches (`optim.accumulate_steps`), and a check of
    the compiled step's memory against the device's before the first step (`memory.py`);
  * a stop at the first non-finite loss, naming the step and the last checkpoint (the
    check lags one step so the host never waits for the device in between);
  * TensorBoard and JSONL scalars, a tqdm bar, and `task.evaluate` every
    `train.eval_every` steps.

Random keys: step n of the loss gets `fold_in(fold_in(key(seed), TRAIN_STREAM), n)`;
the network's dropout stream is reset every step from that key folded with
`DROPOUT_STREAM`; evaluation at step n gets `fold_in(fold_in(key(seed), EVAL_STREAM), n)`.

Config keys read here: `seed`, `data.batch_size` (global), `optim.*`, `train.*`.

What a run writes to its workdir:
  config.json                the resolved config
  checkpoints/<step>/        orbax: state, EMA, data-iterator state, config
  metrics.jsonl              one JSON line per logged step
  tensorboard/               event files (tensorboardX, no TensorFlow needed)
  ...                        whatever the task's `evaluate` writes (figures)
"""

import logging
import pathlib
from typing import Any, Iterator, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from sciimg_jax.core import atomic_files
from sciimg_jax.core import checkpoint
from sciimg_jax.core import interrupts
from sciimg_jax.core import memory
from sciimg_jax.core import metric_writers
from sciimg_jax.core import precision
from sciimg_jax.core import sharding
from sciimg_jax.core.errors import InputError
from sciimg_jax.core.models import Network

TRAIN_STREAM, EVAL_STREAM = 1, 2  # fold_in salts of the loss and evaluation keys
DROPOUT_STREAM = 3                # fold_in salt of the per-step dropout key


class Task(Protocol):
  """What a method supplies to `train`. Batches are dicts of numpy arrays."""

  def create_model(self, rngs: nnx.Rngs, dtype) -> nnx.Module:
    """The trainable network, computing in `dtype`."""

  def frozen_params(self, mesh) -> Any:
    """A pytree of arrays the loss uses but never trains (other networks), or None.

    The trainer replicates it over the mesh and passes it to `loss` and `evaluate`;
    the task keeps the matching `Network`s itself.
    """

  def loss(self, model: nnx.Module, batch: dict, key: jax.Array, frozen: Any):
    """(scalar loss, {name: scalar}) on one global batch, inside the jitted step.

    `model` is the network in train mode with this step's parameters.
    """

  def train_iterator(self, batch_size_per_process: int) -> Iterator[dict]:
    """An infinite iterator of this process's batches with grain's get_state/set_state."""

  def evaluate(self, net: Network, params, frozen, step: int, key: jax.Array,
               workdir: pathlib.Path) -> dict:
    """Host-side evaluation with the EMA `params`: writes figures, returns scalars."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  ema_params: nnx.State


def make_optimizer(optim, num_steps):
  """AdamW with linear warmup, cosine decay and global-norm clipping."""
  warmup = min(optim.warmup_steps, max(num_steps - 1, 0))
  lr = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1),
      end_value=optim.learning_rate * optim.end_lr_factor)
  tx = optax.chain(
      optax.clip_by_global_norm(optim.grad_clip_norm),
      optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))
  return tx, lr


def check_steps(train):
  """Stops on a step count that is not a positive whole number, or a negative interval, before
  any work (`train.num_steps=-5` used to end with rc 0, an empty metrics.jsonl and no
  checkpoint). Tasks call it before they prepare their data."""
  value = train.num_steps
  if isinstance(value, bool) or int(value) != value or value < 1:
    raise InputError("train.num_steps", f"must be a positive whole number of steps, got {value!r}")
  for key in ("log_every", "checkpoint_every", "eval_every"):  # 0: never (the last step only)
    value = train.get(key)
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
      raise InputError(f"train.{key}", f"must be a whole number of steps >= 0, got {value!r}")


def check_config(config):
  """Checks of the keys the loop reads that the config file format cannot express."""
  check_steps(config.train)
  if config.data.batch_size % jax.device_count():
    raise InputError("data.batch_size", f"{config.data.batch_size} is not divisible by "
                     f"the {jax.device_count()} devices")
  k = config.optim.get("accumulate_steps", 1)
  if isinstance(k, bool) or int(k) != k or k < 1:
    raise InputError("optim.accumulate_steps", f"must be a whole number >= 1, got {k!r}")
  if config.data.batch_size % (k * jax.device_count()):
    raise InputError("optim.accumulate_steps", f"{k} micro-batches of data.batch_size="
                     f"{config.data.batch_size} do not split evenly over the "
                     f"{jax.device_count()} devices (each device needs a multiple of {k})")
  for key, low in (("ema_start", 0), ("ema_every", 1)):
    value = config.optim.get(key, low)
    if isinstance(value, bool) or int(value) != value or value < low:
      raise InputError(f"optim.{key}", f"must be a whole number >= {low}, got {value!r}")
  precision.compute_dtype(config)


def create_train_state(task, config, mesh):
  """Builds the task's network and a replicated TrainState. Returns (net, state, tx, lr)."""
  module = task.create_model(nnx.Rngs(params=config.seed, dropout=config.seed + 1),
                             precision.compute_dtype(config))
  net, params = Network.split(module)
  tx, lr = make_optimizer(config.optim, config.train.num_steps)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params))
  return net, jax.device_put(state, sharding.replicated(mesh)), tx, lr


def make_train_step(task, net, tx, lr, ema_decay, mesh, accumulate_steps=1, ema_start=0,
                    ema_every=1):
  """The jitted, data-parallel step `(state, batch, key, frozen) -> (state, metrics)`.

  The EMA of the parameters moves by `ema_decay` after every step (the defaults), or, as the
  released Diff-Ensembler code does, only after the steps s (0-based) with
  s % `ema_every` == 0, and is the parameters themselves at those before `ema_start`.

  With `accumulate_steps` k > 1 the step splits its batch into k micro-batches (example j
  goes to micro-batch j mod k, so that each stays spread over the devices), takes their
  gradients one after another in a `lax.scan` (only one micro-batch's activations live at a
  time) and makes one update with their mean: the whole batch's update, to rounding, for a
  loss that is a mean over examples. (optax.MultiSteps accumulates over calls of the step
  instead, which would make the step counter, schedule, EMA, logs and checkpoints count
  micro-batches.) Micro-batch i draws its noise and dropout from `fold_in(key, i)`.
  A Python loop over the micro-batches runs faster on XLA:CPU (where convolutions inside a
  loop run about 10x slower than unrolled, measured) but saves no memory: XLA then keeps every
  micro-batch's activations. On a CPU, prefer `model.remat` or a smaller batch.
  """
  k = accumulate_steps
  micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))

  def loss_and_grads(params, batch, key, frozen):
    step_net = net.reseeded(params, jax.random.fold_in(key, DROPOUT_STREAM))

    def loss_fn(params):
      return task.loss(step_net.module(params, train=True), batch, key, frozen)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return dict(aux, loss=loss), grads

  def accumulated(params, batch, key, frozen):
    micro = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1), micro_sharding), batch)

    def add(total, i_and_one):
      i, one = i_and_one
      out = loss_and_grads(params, one, jax.random.fold_in(key, i), frozen)
      return jax.tree.map(lambda a, b: a + b / k, total, out), None

    shapes = jax.eval_shape(loss_and_grads, params, jax.tree.map(lambda x: x[0], micro), key,
                            frozen)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.scan(add, zeros, (jnp.arange(k), micro))[0]

  def train_step(state, batch, key, frozen):
    key = jax.random.fold_in(key, state.step)
    metrics, grads = (loss_and_grads if k == 1 else accumulated)(state.params, batch, key, frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
    if ema_start or ema_every != 1:
      s = state.step
      ema = jax.tree.map(lambda e, p: jnp.where(s < ema_start, p, e), ema, params)
      ema = jax.tree.map(lambda e, old: jnp.where(s % ema_every == 0, e, old), ema,
                         state.ema_params)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), learning_rate=lr(state.step))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      ema_params=ema), metrics

  repl = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharding.batch_sharded(mesh), repl, repl),
                 out_shardings=(repl, repl), donate_argnums=0)


MEMORY_KNOBS = ("optim.accumulate_steps (gradient accumulation), model.remat=True, "
                "train.compute_dtype=bfloat16, a smaller data.batch_size or smaller inputs")


def compile_step(train_step, state, batch, key, frozen, what):
  """`train_step` compiled for these arguments, stopped with one line if it cannot fit."""
  compiled = train_step.lower(state, batch, key, frozen).compile()
  needed, available = memory.check_fits(compiled, what, MEMORY_KNOBS)
  if needed is not None:
    logging.info("Training step: %.2f GiB per device of %s.", needed / memory.GIB,
                 "unknown" if available is None else f"{available / memory.GIB:.1f} GiB")
  return compiled


def restore(ckpt, state, mesh, data_iterator):
  """`state` replaced by the latest checkpoint in `ckpt` (data iterator too, in place)."""
  repl = sharding.replicated(mesh)
  core = (state.step, state.params, state.opt_state)
  (step, params, opt_state), ema = ckpt.restore(
      checkpoint.abstract_like(core, repl), checkpoint.abstract_like(state.ema_params, repl),
      data_iterator)
  return TrainState(step=step, params=params, opt_state=opt_state, ema_params=ema)


def save(ckpt, step, state, data_iterator, config):
  ckpt.save(step, (state.step, state.params, state.opt_state), state.ema_params,
            data_iterator, config, force=True)


class _LossCheck:
  """Stops at the first non-finite loss, one step behind the device (no per-step sync)."""

  def __init__(self, ckpt, workdir):
    self.ckpt, self.workdir, self.pending = ckpt, workdir, None

  def push(self, step, loss):
    """Checks the previous step's loss, then holds this one; returns the checked value."""
    checked = self.flush()
    self.pending = (step, loss)
    return checked

  def flush(self):
    if self.pending is None:
      return None
    step, loss = self.pending
    self.pending = None
    loss = float(loss)
    if not np.isfinite(loss):
      raise FloatingPointError(
          f"loss is {loss} at step {step}; stopping. Last checkpoint: step "
          f"{self.ckpt.latest_step()} in {self.workdir / 'checkpoints'}. Try a lower "
          "optim.learning_rate or check the input data.")
    return loss


def write_config(config, workdir):
  """Process 0 writes the resolved config to `workdir/config.json` (written, then renamed)."""
  if jax.process_index() == 0:
    atomic_files.write_text(pathlib.Path(workdir) / "config.json",
                            config.to_json_best_effort(indent=2))


def train(task, config, workdir, *, stop_at_step=None):
  """Trains `task`, checkpoints and logs in `workdir`; resumes from its latest checkpoint.

  `stop_at_step` ends this call early (checkpointing there), as a preempted run
  would; a later call with the same config continues to `train.num_steps`.
  Returns the final TrainState.
  """
  check_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  write_config(config, workdir)
  logging.info("Config:\n%s", config)
  tqdm.tqdm.write(f"Training {config.model.name} in {workdir} on {jax.device_count()} "
                  f"{jax.default_backend()} device(s).")

  mesh = sharding.make_mesh()
  train_iter = task.train_iterator(config.data.batch_size // jax.process_count())
  net, state, tx, lr = create_train_state(task, config, mesh)
  frozen = jax.device_put(task.frozen_params(mesh), sharding.replicated(mesh))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.max_checkpoints)
  if ckpt.latest_step() is not None:
    state = restore(ckpt, state, mesh, train_iter)
    tqdm.tqdm.write(f"Resumed from the checkpoint of step {int(state.step)}.")
  train_step = make_train_step(task, net, tx, lr, config.optim.ema_decay, mesh,
                               config.optim.get("accumulate_steps", 1),
                               config.optim.get("ema_start", 0), config.optim.get("ema_every", 1))

  writer = metric_writers.MetricWriter(workdir, enabled=is_main,
                                       resume_step=int(state.step))
  writer.write_text("config", f"```\n{config}\n```")
  key = jax.random.key(config.seed)
  train_key, eval_key = jax.random.fold_in(key, TRAIN_STREAM), jax.random.fold_in(key, EVAL_STREAM)
  first, last = int(state.step), min(config.train.num_steps, stop_at_step or config.train.num_steps)
  bar = tqdm.trange(first, last, initial=first, total=config.train.num_steps, desc="train",
                    disable=not (is_main and config.train.progress_bar))
  every = lambda n, done: n and (done % n == 0 or done == last)
  losses, loss_check = [], _LossCheck(ckpt, workdir)
  try:
    for step in bar:
      interrupts.check()
      batch = sharding.shard_batch(next(train_iter), mesh)
      if step == first:  # compiled before it runs, to stop at once if it cannot fit
        train_step = compile_step(train_step, state, batch, train_key, frozen,
                                  f"{workdir} (training {config.model.name})")
      state, metrics = train_step(state, batch, train_key, frozen)
      done = step + 1
      checked = loss_check.push(done, metrics["loss"])
      losses.append(metrics["loss"])
      if checked is not None:
        bar.set_postfix(loss=f"{checked:.4f}")
      logs, evals, saves = (every(config.train.log_every, done), every(config.train.eval_every, done),
                            every(config.train.checkpoint_every, done))
      if logs or evals or saves:
        loss_check.flush()  # nothing non-finite is logged, evaluated or checkpointed
      if logs:
        scalars = {k: float(v) for k, v in metrics.items()}
        scalars["loss"] = float(np.mean([float(l) for l in losses]))
        losses = []
        writer.write_scalars(done, scalars)
      if evals:
        writer.write_scalars(done, task.evaluate(net, state.ema_params, frozen, done,
                                                 jax.random.fold_in(eval_key, done), workdir))
      if saves:
        save(ckpt, done, state, train_iter, config)
    loss_check.flush()
  except interrupts.Interrupted as e:
    raise interrupts.Interrupted(f"training stopped; last complete checkpoint: step "
                                 f"{ckpt.latest_step()} in {ckpt.directory}") from e
  finally:
    ckpt.wait_until_finished()  # a checkpoint in flight is completed, never left half-written
    ckpt.close()
    writer.close()
  return state
