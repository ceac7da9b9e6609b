"""Runs a job from a config file.

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
  python main.py --config=configs/inpainting/axial.py:tiny --workdir=/tmp/w --config.train.num_steps=10

The job is `config.job` (a key of `JOBS`); bad input stops with one line that
names the file or config key and the problem.
"""

import os
import sys

from sciimg_jax.core import interrupts

interrupts.install()  # first: a Ctrl-C while JAX loads stops with one line, rc 130

from sciimg_jax.core import xla_flags  # noqa: E402

xla_flags.set_cpu_flags()  # before JAX starts

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sciimg_jax import jobs  # noqa: E402
from sciimg_jax.core import distributed  # noqa: E402
from sciimg_jax.core.errors import InputError  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.", required=True)
flags.DEFINE_bool("multihost", False, "Start JAX on several processes first "
                  "(jax.distributed.initialize; without the three flags below, JAX reads the "
                  "cluster: SLURM, TPU pod slice or JAX_COORDINATOR_ADDRESS and friends).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (implies --multihost).")
flags.DEFINE_integer("num_processes", None, "Number of processes (implies --multihost).")
flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.")
flags.DEFINE_integer("multihost_timeout", 300, "Seconds to wait for all processes to join; "
                     "also how long a dead process goes unnoticed at most.")
config_flags.DEFINE_config_file("config", None, "Job config file (path[:variant]).",
                                lock_config=True)


def repeated_overrides(argv):
  """The `--config.X` keys given more than once (a repeated tuple override concatenates)."""
  keys = [a.split("=", 1)[0].lstrip("-") for a in argv[1:] if a.startswith("--config.")]
  return sorted({k for k in keys if keys.count(k) > 1})


def parse_flags(argv):
  """absl flag parsing that reports a bad config file, variant or key in one line."""
  repeated = repeated_overrides(argv)
  if repeated:
    sys.exit(f"error: {', '.join('--' + k for k in repeated)}: given more than once; give each "
             f"config key once")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    # config_flags embeds the config file's traceback; its last line is the reason.
    sys.exit(f"error: {lines[0]} {lines[-1]}" if len(lines) > 1 else f"error: {e}")
  except (AttributeError, KeyError) as e:  # An override names a key the config lacks.
    detail = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "")
    keys = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    sys.exit(f"error: unknown config key in {' '.join(keys)}: {detail}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:  # Keep the console to progress bars and results.
    logging.set_verbosity(logging.WARNING)
  multihost = (FLAGS.multihost or FLAGS.coordinator_address is not None
               or FLAGS.num_processes is not None)
  try:
    if multihost:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                             timeout_s=FLAGS.multihost_timeout,
                             heartbeat_s=FLAGS.multihost_timeout,
                             config=FLAGS.config)  # every process stops unless all agree
  except InputError as e:
    sys.exit(f"error: {e}")
  logging.info("JAX %s, devices: %s", jax.__version__, jax.devices())
  config = FLAGS.config
  interrupts.started()
  try:
    jobs.run(config, FLAGS.workdir)
    distributed.finished()
  except (InputError, FloatingPointError) as e:
    distributed.stop(f"error: {e}")
  except interrupts.Interrupted as e:
    distributed.abandon()  # the other processes stop too, with one line
    sys.stderr.write(f"stopped: {e}\n")  # completes the Ctrl-C line: one line in all
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(interrupts.EXIT_STATUS)  # skip interpreter teardown while XLA threads run
  except Exception as e:  # pylint: disable=broad-except  # a bug, or a dead peer's collective
    distributed.failed(e)  # several processes: does not return
    raise


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
