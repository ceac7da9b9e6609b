"""Training of conditional diffusion models on slices (or volumes), data parallel.

The model is a Flax NNX module used functionally: `nnx.split` gives a static
graph definition, the parameters and the remaining state (RNG streams); a pure
`train_step(state, batch, key)` merges them inside `jax.jit`. The batch is split
across all devices on the mesh axis 'data'; the train state is replicated.

What a run writes to its workdir:
  config.json                the resolved config
  checkpoints/<step>/        orbax: train state, data-iterator state, config
  metrics.jsonl              one JSON line per logged step
  tensorboard/               event files (tensorboardX, no TensorFlow needed)
  samples/step_<n>.png       held-out slices: voided | mask | inpainted | ground truth
"""

import logging
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from data_pipelines import input_pipeline
from data_pipelines import sources as data_sources
from sciimg_jax import checkpoint
from sciimg_jax import diffusion
from sciimg_jax import figures
from sciimg_jax import inpainting
from sciimg_jax import metric_writers
from sciimg_jax import models
from sciimg_jax import sharding
from sciimg_jax.errors import InputError


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


def check_config(config):
  """Consistency checks the config file format cannot express."""
  expected = 1 + len(config.data.conditions)
  if config.model.in_channels != expected:
    raise InputError("model.in_channels", f"is {config.model.in_channels}, but x_t plus "
                     f"{len(config.data.conditions)} conditions {tuple(config.data.conditions)} "
                     f"make {expected}")
  if config.data.batch_size % jax.device_count():
    raise InputError("data.batch_size", f"{config.data.batch_size} is not divisible by "
                     f"the {jax.device_count()} devices")
  if config.train.sample_every and config.train.num_sample_images % jax.device_count():
    raise InputError("train.num_sample_images", f"{config.train.num_sample_images} is not "
                     f"divisible by the {jax.device_count()} devices")
  compute_dtype(config)


def compute_dtype(config):
  """The network's compute dtype; 'auto' is bfloat16 on GPU/TPU and float32 on CPU."""
  name = config.train.compute_dtype
  if name == "auto":
    name = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if name not in ("float32", "bfloat16", "float16"):
    raise InputError("train.compute_dtype", f"unknown dtype {name!r}")
  return jnp.dtype(name)


def create_train_state(config, mesh):
  """Builds the model and a replicated TrainState. Returns (graphdef, rest, state, tx, lr)."""
  model = models.create_model(config.model, dtype=compute_dtype(config),
                              rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx, lr = make_optimizer(config.optim, config.train.num_steps)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params), ema_params=jax.tree.map(jnp.copy, params))
  state = jax.device_put(state, sharding.replicated(mesh))
  return graphdef, rest, state, tx, lr


def reseed_dropout(graphdef, params, rest, key):
  """`rest` with the dropout stream reset to `key` (a per-step key, so no RNG state is carried)."""
  model = nnx.merge(graphdef, params, rest, copy=True)  # own Variables, so reseeding may write
  nnx.reseed(model, dropout=key)
  return nnx.split(model, nnx.Param, ...)[2]


def model_apply(graphdef, rest, params, x_t, cond, t, train=False):
  """Runs the network on concat(x_t, cond) at timesteps t; dropout is active iff `train`."""
  model = nnx.merge(graphdef, params, rest, copy=True)
  model.train() if train else model.eval()
  return model(jnp.concatenate([x_t, cond], axis=-1), t)


def make_train_step(config, graphdef, rest, tx, lr, mesh):
  """The jitted, data-parallel train step `(state, batch, key) -> (state, metrics)`."""
  schedule = diffusion.schedule_from_config(config.diffusion)
  param = config.diffusion.parameterization
  ema_decay = config.optim.ema_decay

  def train_step(state, batch, key):
    key = jax.random.fold_in(key, state.step)
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    x0, cond = batch["target"], batch["cond"]
    t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.betas.shape[0])
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = diffusion.q_sample(schedule, x0, t, noise)
    step_rest = reseed_dropout(graphdef, state.params, rest, dropout_key)

    def loss_fn(params):
      out = model_apply(graphdef, step_rest, params, x_t, cond, schedule.timesteps[t], train=True)
      return diffusion.diffusion_loss(schedule, param, out.astype(jnp.float32), x0, noise, t)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": lr(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      ema_params=ema), metrics

  repl = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharding.batch_sharded(mesh), repl),
                 out_shardings=(repl, repl), donate_argnums=0)


def known_and_mask(config, cond):
  """The voided image and the mask, (B, ..., 1) each, from the condition channels."""
  conditions = list(config.data.conditions)
  for key in ("t1n-voided", "mask"):
    if key not in conditions:
      raise InputError("data.conditions", f"inpainting needs {key!r} among {tuple(conditions)}")
  v, m = conditions.index("t1n-voided"), conditions.index("mask")
  return cond[..., v:v + 1], cond[..., m:m + 1]


def make_inpaint_fn(config, graphdef, rest, mesh):
  """Jitted slice inpainting `(params, batch, key) -> x0` with the sampling schedule."""
  d = config.diffusion
  schedule = diffusion.respace(diffusion.schedule_from_config(d), d.sample_steps, d.spacing)

  def inpaint(params, batch, key):
    cond = batch["cond"]
    known, mask = known_and_mask(config, cond)
    x_init = jax.random.normal(jax.random.fold_in(key, 0), known.shape, known.dtype)
    model_fn = lambda x_t, t: model_apply(graphdef, rest, params, x_t, cond, t).astype(jnp.float32)
    x0 = diffusion.sample(
        model_fn, schedule, x_init, jax.random.fold_in(key, 1), parameterization=d.parameterization,
        stepper=d.stepper, eta=d.eta, clip_x0=1.0,
        post_step_fn=inpainting.known_region_replacement(schedule, known, mask))
    return mask * x0 + (1.0 - mask) * known

  repl = sharding.replicated(mesh)
  return jax.jit(inpaint, in_shardings=(repl, sharding.batch_sharded(mesh), repl),
                 out_shardings=sharding.batch_sharded(mesh))


def write_samples(path, config, inpaint_fn, params, batch, mesh, key):
  """Inpaints held-out slices, saves the figure and returns the error inside the mask."""
  result = np.asarray(jax.device_get(inpaint_fn(params, sharding.shard_batch(batch, mesh), key)))
  voided, mask = known_and_mask(config, batch["cond"])
  target = batch["target"]
  figures.save_inpainting_grid(path, voided=voided[..., 0], mask=mask[..., 0],
                               result=result[..., 0], target=target[..., 0])
  err = ((result - target) / 2.0) ** 2 * mask  # on the [0, 1] scale
  return {"sample_mse_in_mask": float(err.sum() / max(mask.sum(), 1.0))}


def train_and_evaluate(config, workdir, *, stop_at_step=None):
  """Trains, checkpoints and logs in `workdir`; resumes from its latest checkpoint.

  `stop_at_step` ends this call early (checkpointing there), as a preempted run
  would; a later call with the same config continues to `train.num_steps`.
  """
  check_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  logging.info("Config:\n%s", config)
  tqdm.tqdm.write(f"Training {config.model.name} in {workdir} on {jax.device_count()} "
                  f"{jax.default_backend()} device(s).")

  mesh = sharding.make_mesh()
  splits = data_sources.source_dirs(config.data, workdir)
  sources = input_pipeline.slice_sources(
      config.data, splits, config.data.cache_dir or workdir / "data")
  train_iter = input_pipeline.make_train_iterator(
      config.data, sources["train"], seed=config.seed,
      batch_size_per_process=config.data.batch_size // jax.process_count())
  # Held-out slices for the sample figures, spread evenly over the eval cases.
  sample_batch = input_pipeline.make_batch(config.data, sources["eval"], np.linspace(
      0, len(sources["eval"]) - 1, config.train.num_sample_images).round())

  graphdef, rest, state, tx, lr = create_train_state(config, mesh)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", max_to_keep=config.train.max_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(checkpoint.abstract_like(state, sharding.replicated(mesh)), train_iter)
    tqdm.tqdm.write(f"Resumed from the checkpoint of step {int(state.step)}.")
  train_step = make_train_step(config, graphdef, rest, tx, lr, mesh)
  inpaint_fn = make_inpaint_fn(config, graphdef, rest, mesh) if config.train.sample_every else None

  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  writer.write_text("config", f"```\n{config}\n```")
  key = jax.random.key(config.seed)
  train_key, sample_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
  first, last = int(state.step), min(config.train.num_steps, stop_at_step or config.train.num_steps)
  losses = []
  bar = tqdm.trange(first, last, initial=first, total=config.train.num_steps, desc="train",
                    disable=not (is_main and config.train.progress_bar))
  for step in bar:
    batch = sharding.shard_batch(next(train_iter), mesh)
    state, metrics = train_step(state, batch, train_key)
    loss = float(metrics["loss"])
    if not np.isfinite(loss):
      raise FloatingPointError(
          f"loss is {loss} at step {step + 1}; stopping. Last checkpoint: step "
          f"{ckpt.latest_step()} in {workdir / 'checkpoints'}. Try a lower optim.learning_rate "
          "or check the input data.")
    losses.append(loss)
    done = step + 1
    bar.set_postfix(loss=f"{loss:.4f}")
    if done % config.train.log_every == 0 or done == last:
      scalars = {k: float(v) for k, v in metrics.items()}
      scalars["loss"] = float(np.mean(losses))
      losses = []
      writer.write_scalars(done, scalars)
    if config.train.sample_every and (done % config.train.sample_every == 0 or done == last):
      scalars = write_samples(workdir / "samples" / f"step_{done:07d}.png", config, inpaint_fn,
                              state.ema_params, sample_batch, mesh,
                              jax.random.fold_in(sample_key, done))
      writer.write_scalars(done, scalars)
    if done % config.train.checkpoint_every == 0 or done == last:
      ckpt.save(done, state, train_iter, config, force=True)
  ckpt.wait_until_finished()
  ckpt.close()
  writer.close()
  return state
