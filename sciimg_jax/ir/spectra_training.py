"""A per-spectrum network trained on every split of a table, compiled once for all of them.

The `ir_spectra` job trains the same network on k folds, and again on each fold's shuffled
labels: the same shapes every time. `SpectraNetwork` builds the shared trainer's step once
(`trainer.make_train_step`: the classifier task's loss, global-norm clipping, AdamW, the
EMA; the schedule of `train.num_steps`), compiles it on the first split
(`trainer.compile_step`, with its memory check) and runs that compiled step on every split,
the parameters and optimiser state passed as arguments and started each time from the same
initial values (`seed`). Its evaluation (`classifier_task.evaluate_classifier`: the scores and
diagnostics on the held-out spectra, with the EMA parameters) is jitted once too, and fed
chunks of one size (the last padded), so it compiles once as well.

Batches come from the split's standardised training spectra (`ClassifierTask.arrays`), in
memory: each epoch a permutation drawn from `seed` and the epoch, the epochs chained and cut
into batches of `data.batch_size`, so every spectrum is seen once an epoch (a batch may span
two epochs, as grain's loader does for the patch jobs) and every split has the same batch
shape whatever its size. Keys are the trainer's: step n of the loss gets
`fold_in(fold_in(key(seed), TRAIN_STREAM), n)`.

A split trains in seconds, so nothing is checkpointed: `final_metrics.json` marks a finished
split (the job reuses it) and a split stopped half-way is trained again from its start. Its
workdir gets `config.json`, `metrics.jsonl` and TensorBoard events of the logged steps
(`train.log_every`) and evaluations (`train.eval_every`), as from the shared trainer; the
mean loss of every logged interval and of the last is checked to be finite.
"""

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from sciimg_jax.core import atomic_files
from sciimg_jax.core import interrupts
from sciimg_jax.core import metric_writers
from sciimg_jax.core import sharding
from sciimg_jax.core import trainer
from sciimg_jax.ir import classifier_task
from sciimg_jax.ir import diagnostics

EVAL_CHUNK = 256  # held-out spectra a call of the evaluation, at most


def batch_order(num_examples, num_rows, seed):
  """(num_rows,) example indices: epochs of permutations drawn from (seed, epoch), chained."""
  epochs = -(-num_rows // num_examples)
  order = [np.random.default_rng([seed, e]).permutation(num_examples) for e in range(epochs)]
  return np.concatenate(order)[:num_rows]


def in_chunks(fn, params, x, size):
  """`fn(params, chunk)` over `x` in chunks of exactly `size` rows, the last padded with zeros
  (so that `fn` sees one shape), its outputs (arrays or a tuple) cut back to len(x) rows."""
  n = len(x)
  x = np.concatenate([x, np.zeros((-n % size,) + x.shape[1:], x.dtype)])
  outs = [jax.tree.map(np.asarray, fn(params, x[i:i + size])) for i in range(0, len(x), size)]
  return jax.tree.map(lambda *a: np.concatenate(a)[:n], *outs)


class SpectraNetwork:
  """One network of one config (`config.model`, `config.optim`, `config.train`), trained on
  many splits with one compiled step and one compiled evaluation (module docstring).

  `task` (a `classifier_task.ClassifierTask` of any split) gives the network's shapes and
  the loss, which depends on the config and the number of classes only; every task
  `train` gets must have the same. `eval_rows` sets the evaluation's chunk (at most
  EVAL_CHUNK): the held-out size of a split, so a small table is not padded far.
  """

  def __init__(self, config, task, eval_rows):
    self.config = config
    self.mesh = sharding.make_mesh()
    self.net, state, self.tx, self.lr = trainer.create_train_state(task, config, self.mesh)
    self.initial = jax.device_get(state)  # every split starts here (the step donates its state)
    self.step = trainer.make_train_step(task, self.net, self.tx, self.lr, config.optim.ema_decay,
                                        self.mesh, config.optim.get("accumulate_steps", 1))
    self.compiled = None  # the step, compiled on the first split
    self.chunk = max(1, min(EVAL_CHUNK, int(eval_rows)))
    net = self.net

    def embed(params, x):
      return classifier_task.logits_and_features(net, params, x)

    def input_gradients(params, x):
      return diagnostics.top_logit_gradients(lambda b: net(params, b).astype(jnp.float32), x)

    self.embed, self.input_gradients = jax.jit(embed), jax.jit(input_gradients)

  def evaluate(self, task, params):
    """The held-out scores and diagnostics of `task` with `params`."""
    return classifier_task.evaluate_classifier(
        task, self.net, params, lambda p, x: in_chunks(self.embed, p, x, self.chunk),
        gradients=lambda p, x: diagnostics.pixel_sum(in_chunks(self.input_gradients, p, x,
                                                               self.chunk)))

  def train(self, task, workdir, start=None, desc="train", **extra):
    """Trains from the initial parameters on `task`'s training spectra, scores its held-out
    ones with the EMA parameters, writes `final_metrics.json` (with the `extra` entries, the
    split's `seconds` since `start` (a `time.perf_counter()`; default now: the caller may
    count preparing the task) and, of them, `compile_seconds` of the step: 0 after the first
    split) and returns those metrics."""
    start = time.perf_counter() if start is None else start
    c, workdir = self.config, pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    trainer.write_config(c, workdir)
    num_steps, size = c.train.num_steps, c.data.batch_size
    x, y = task.arrays("train")
    order = batch_order(len(y), num_steps * size, c.seed).reshape(num_steps, size)
    block = size // jax.process_count()  # this process's rows of each global batch
    order = order[:, jax.process_index() * block:(jax.process_index() + 1) * block]
    state = jax.device_put(self.initial, sharding.replicated(self.mesh))
    train_key = jax.random.fold_in(jax.random.key(c.seed), trainer.TRAIN_STREAM)
    writer = metric_writers.MetricWriter(workdir, enabled=is_main, resume_step=0)
    every = lambda n, done: n and (done % n == 0 or done == num_steps)
    losses, compiling = [], 0.0
    try:
      for step in tqdm.trange(num_steps, desc=desc, leave=False,
                              disable=not (is_main and c.train.progress_bar)):
        interrupts.check()
        batch = sharding.shard_batch({"x": x[order[step]], "label": y[order[step]]}, self.mesh)
        if self.compiled is None:
          begin = time.perf_counter()
          self.compiled = trainer.compile_step(self.step, state, batch, train_key, None,
                                               f"{workdir} (training {c.model.name})")
          compiling = time.perf_counter() - begin
        state, metrics = self.compiled(state, batch, train_key, None)
        losses.append(metrics["loss"])
        done = step + 1
        logs, evals = every(c.train.log_every, done), every(c.train.eval_every, done)
        if logs or done == num_steps:  # nothing non-finite is logged or scored
          loss = float(np.mean([float(l) for l in losses]))
          if not np.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {done} of {workdir}; stopping. Try a lower "
                "optim.learning_rate or check the input data.")
          if logs:
            writer.write_scalars(done, {**{k: float(v) for k, v in metrics.items()},
                                        "loss": loss})
            losses = []
        if evals or done == num_steps:
          scores = self.evaluate(task, state.ema_params)
          if evals:
            writer.write_scalars(done, scores)
    finally:
      writer.close()
    result = dict(step=num_steps, **extra, model=c.model.name, **scores,
                  seconds=round(time.perf_counter() - start, 3),
                  compile_seconds=round(compiling, 3))
    atomic_files.write_json(workdir / "final_metrics.json", result)
    return result
