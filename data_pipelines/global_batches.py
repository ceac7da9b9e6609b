"""Training batches that do not depend on the number of processes.

Every process walks the same shuffled order of the whole dataset (one grain sampler, no
sharding) and batches it in global batches of `batch_size_per_process x process_count`; then
it keeps its own block of each (rows `index x b` to `(index + 1) x b`). The global batch of
step n, which the sharded train step sees, is therefore the same for 1 process with 4
devices as for 2 processes with 2 each, example for example and in the same rows, so the
two runs train alike (grain's `ShardByJaxProcess` instead hands each process a disjoint
shard of every epoch, and the global batches differ with the number of processes).

The price: every process reads and transforms the whole global batch, `process_count`
times the input work of a shard. For slices and volumes read from a prepared cache that is
small beside a training step.
"""

import grain
import jax


class ProcessBlock(grain.transforms.Map):
  """Keeps block `index` of `count` equal blocks of a batch (every array, along axis 0)."""

  def __init__(self, index, count):
    self.index, self.count = int(index), int(count)

  def map(self, batch):
    def block(v):
      b = len(v) // self.count
      return v[self.index * b:(self.index + 1) * b]
    return jax.tree.map(block, batch)


def train_loader(source, *, seed, batch_size_per_process, operations=(), num_workers=0,
                 process=None):
  """An infinite, per-epoch shuffled, resumable grain iterator of this process's batches.

  `operations` run on each record before batching; `process` is (index, count), by default
  JAX's (tests pass their own).
  """
  index, count = process if process is not None else (jax.process_index(),
                                                       jax.process_count())
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=grain.sharding.NoSharding(), shuffle=True,
      num_epochs=None, seed=int(seed))
  ops = list(operations) + [
      grain.transforms.Batch(int(batch_size_per_process) * count, drop_remainder=True)]
  if count > 1:
    ops.append(ProcessBlock(index, count))
  return iter(grain.DataLoader(data_source=source, sampler=sampler, operations=ops,
                               worker_count=int(num_workers)))
