"""2 processes x 2 CPU devices (gloo collectives) against 1 process x 4 devices: the trainer's
step gives the same losses, gradient norms and parameters."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import nibabel as nib
import numpy as np

import multiprocess_reference as ref
from sciimg_jax.core import distributed
from sciimg_jax.core import sharding
from sciimg_jax.core import trained_models
from sciimg_jax.inpainting import slice_inputs
from tolerances import float32_tolerance, max_abs

HERE = pathlib.Path(__file__).resolve().parent


def test_two_processes_match_one(tmp_path):
  port = free_port()
  out = tmp_path / "two.npz"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(HERE / "multiprocess_worker.py"),
                             f"127.0.0.1:{port}", "2", str(i), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
  two = np.load(out)
  assert jax.device_count() == 4
  params, metrics = ref.run_steps(jax.devices())
  # Each gradient entry sums 8 examples' terms (fan-in 16 + 8 in the MLP's backward); the two
  # runs add them in other groupings (per device, then across devices and processes).
  ops = 2 * (8 + 16 + 8)
  np.testing.assert_allclose(two["metric_loss"], metrics["loss"],
                             rtol=float32_tolerance(1.0, ops))
  np.testing.assert_allclose(two["metric_grad_norm"], metrics["grad_norm"],
                             rtol=float32_tolerance(1.0, ops))
  for i, p in enumerate(params):
    magnitude = max(1.0, float(np.abs(p).max()))
    np.testing.assert_allclose(two[f"arr_{i}"], np.asarray(p), rtol=0,
                               atol=3 * float32_tolerance(magnitude, ops))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_two(workdir, data_cache, overrides, *flags):
  """main.py on 2 local processes x 2 CPU devices; returns the two Popen objects."""
  env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  args = ["--config=configs/inpainting/axial.py:tiny", f"--workdir={workdir}",
          f"--config.data.cache_dir={data_cache}",
          *[f"--config.{k}={v}" for k, v in overrides.items()],
          f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2", *flags]
  return [subprocess.Popen([sys.executable, str(HERE.parent / "main.py"), *args,
                            f"--process_id={i}"], cwd=HERE.parent, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(2)]


def run_two(workdir, data_cache, overrides):
  """Runs main.py on 2 processes to the end; returns their output (stdout and stderr)."""
  procs = start_two(workdir, data_cache, overrides)
  logs = ["".join(p.communicate(timeout=600)) for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
  return logs


def losses(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def set_overrides(config, overrides):
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value


def test_two_process_training_run_matches_one_and_resumes(tiny_config, data_cache, tmp_path):
  """main.py on 2 processes x 2 devices against the same training in this process (4 devices):
  the same global batches (data_pipelines/global_batches.py), so the same losses and final
  parameters; metrics, figure and checkpoints written once; and a 2-process run resumed from
  its checkpoint of step 4 is the uninterrupted one."""
  # ema_decay 0: the EMA parameters (what a checkpoint gives inference) are the parameters.
  overrides = {"train.num_steps": 8, "optim.learning_rate": 1e-2, "optim.warmup_steps": 1,
               "optim.ema_decay": 0.0, "train.log_every": 1, "train.eval_every": 8, "train.checkpoint_every": 4,
               "train.progress_bar": False}
  set_overrides(tiny_config, overrides)
  slice_inputs.train_slice_model(tiny_config, tmp_path / "one")  # also prepares the data
  run_two(tmp_path / "two", data_cache, overrides)
  one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
  assert [s for s, _ in two] == list(range(1, 9))  # one row per step: process 0 writes
  # The runs differ only in the order of reductions over devices and processes: each loss is
  # a mean of 4 x h x w terms (2 x that many roundings on both sides). Different batches (a
  # sharded epoch) part the losses by ~2 % by step 8.
  h, w = tiny_config.data.image_size
  rounding = float32_tolerance(1.0, 2 * 4 * h * w)
  np.testing.assert_allclose([l for _, l in two], [l for _, l in one], rtol=rounding)
  # Parameters: Adam moves each by about lr per step whatever the gradient's size, so a
  # relative gradient difference of `rounding` moves it by lr x rounding per step, 8 steps.
  # (A gradient that misses one process's examples moves it by ~lr.)
  mesh = sharding.make_mesh()
  trained = {run: trained_models.load(tmp_path / run, mesh) for run in ("one", "two")}
  assert trained["one"].step == trained["two"].step == 8
  lr, steps = overrides["optim.learning_rate"], overrides["train.num_steps"]
  # The attention's key bias is the exception: softmax ignores a shift common to all keys, so
  # its gradient is 0 but for rounding, which Adam normalises to steps of up to lr (measured:
  # 8e-5 apart); it does not change the network's output.
  leaves = jax.tree_util.tree_flatten_with_path(trained["two"].params)[0]
  for (path, a), b in zip(leaves, jax.tree.leaves(trained["one"].params)):
    inert = "'key'" in jax.tree_util.keystr(path) and "'bias'" in jax.tree_util.keystr(path)
    atol = steps * lr * (1.0 if inert else rounding) + float32_tolerance(max_abs(b), steps)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol,
                               err_msg=jax.tree_util.keystr(path))
  assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["4", "8"]
  assert [p.name for p in (tmp_path / "two" / "samples").iterdir()] == ["step_0000008.png"]

  # Resume: the run's checkpoint of step 8 removed, both processes restore step 4 and go on.
  shutil.copytree(tmp_path / "two", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "8")
  logs = run_two(tmp_path / "resumed", data_cache, dict(overrides, **{"train.eval_every": 0}))
  assert all("Resumed from the checkpoint of step 4." in log for log in logs)
  assert losses(tmp_path / "resumed") == two  # same processes, same programs: exactly
  resumed = trained_models.load(tmp_path / "resumed", mesh)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(trained["two"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_killed_process_stops_the_other_with_one_line_and_the_rerun_resumes(
    tiny_config, data_cache, tmp_path):
  """Process 1 killed (SIGKILL) after the checkpoint of step 4: process 0 stops within the
  multihost timeout with one line, and the same command again resumes and finishes.
  (Preparing data on 2 processes, process 0 first, is exercised by the ensembler test.)"""
  slice_inputs.InpaintingSlices().sources(tiny_config, tmp_path)  # prepared once, here
  timeout_s, num_steps = 8, 24
  overrides = {"train.num_steps": num_steps, "train.checkpoint_every": 2, "train.log_every": 1,
               "train.eval_every": 0, "train.progress_bar": False}
  workdir = tmp_path / "run"
  procs = start_two(workdir, data_cache, overrides, f"--multihost_timeout={timeout_s}")
  deadline = time.monotonic() + 300
  while not (workdir / "checkpoints" / "4").is_dir():
    assert time.monotonic() < deadline and procs[1].poll() is None, procs[1].communicate()[1]
    time.sleep(0.05)
  procs[1].kill()
  killed = time.monotonic()
  err = procs[0].communicate(timeout=60)[1]
  waited = time.monotonic() - killed
  procs[1].communicate()
  # Its collective hangs, or fails at once when it was reading from the killed process
  # (distributed.failed then waits for the watchdog's verdict): the same line either way.
  assert procs[0].returncode == distributed.PEER_FAILED_STATUS, err[:3000] + err[-3000:]
  # The watchdog's bound: no sign of life for timeout/4, noticed within timeout/40 (+ slack
  # for a busy machine); XLA's own abort (exit -6, ~100 lines) comes at `timeout_s`.
  assert waited < timeout_s, err[-3000:]
  lines = [l for l in err.splitlines() if l.strip()]
  assert lines[-1].startswith("error: process 0: process 1 gave no sign of life"), err[-3000:]
  assert not any(w in err for w in ("Traceback", "Fatal Python error", "Terminating process"))
  stopped_at = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert 4 <= stopped_at < num_steps

  logs = run_two(workdir, data_cache, overrides)
  resumed_from = {int(l.split("step ")[1].rstrip(".")) for log in logs for l in log.splitlines()
                  if l.startswith("Resumed from the checkpoint of step")}
  assert len(resumed_from) == 1 and 4 <= resumed_from.pop() <= stopped_at
  assert [s for s, _ in losses(workdir)] == list(range(1, num_steps + 1))


def run_main_processes(n, args, timeout_s=600):
  """main.py on `n` local processes x 2 CPU devices (n=1: a plain run); returns the output."""
  env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  flags = ([] if n == 1 else
           [f"--coordinator_address=127.0.0.1:{free_port()}", f"--num_processes={n}"])
  procs = [subprocess.Popen([sys.executable, str(HERE.parent / "main.py"), *args, *flags,
                             *([f"--process_id={i}"] if n > 1 else [])], cwd=HERE.parent,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(n)]
  logs = ["".join(p.communicate(timeout=timeout_s)) for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(l[-3000:] for l in logs)
  return logs


def test_inference_and_scoring_split_cases_by_name_over_two_processes(
    data_cache, slice_model_dirs, tmp_path):
  """The inpainting and scoring jobs on 2 processes x 2 devices: each case on one process,
  the predictions of one process x 2 devices to the bit, one merged summary that lists the
  case that failed, and the scores of one process."""
  from sciimg_jax.inpainting import scoring_job  # pylint: disable=g-import-not-at-top
  from configs.inpainting import evaluate as evaluate_config  # pylint: disable=g-import-not-at-top
  cases = tmp_path / "cases"
  for d in sorted(data_cache.glob("embedded-4mm-seed*/*/BraTS-*")):
    shutil.copytree(d, cases / d.name)
  names = sorted(p.name for p in cases.iterdir())
  broken = cases / names[1] / f"{names[1]}-mask.nii.gz"  # on process 1: names[1::2]
  broken.write_bytes(b"not a NIfTI file")
  args = ["--config=configs/inpainting/inpaint.py:tiny", f"--config.inpaint.input_dir={cases}",
          f"--config.pipeline.axial_workdir={slice_model_dirs['axial']}",
          f"--config.pipeline.coronal_workdir={slice_model_dirs['coronal']}"]
  run_main_processes(1, [*args, f"--workdir={tmp_path / 'one'}"])
  logs = run_main_processes(2, [*args, f"--workdir={tmp_path / 'two'}"])
  assert "failed" in logs[0] and "done" not in logs[1]  # process 0 reports, once

  summaries = {run: json.loads((tmp_path / run / "inpaint_summary.json").read_text())
               for run in ("one", "two")}
  one, two = summaries["one"], summaries["two"]
  assert list(two["done"]) == list(one["done"]) == [n for n in names if n != names[1]]
  assert two["failed"] == one["failed"] and [f["case"] for f in two["failed"]] == [names[1]]
  assert str(broken) in two["failed"][0]["error"]
  assert sorted(json.loads((tmp_path / "two" / "predictions" / "timings.json").read_text())) \
      == sorted(one["done"])
  assert not list((tmp_path / "two").glob("inpaint_summary.process-*"))
  for name in one["done"]:
    a, b = (nib.load(tmp_path / run / "predictions" / name / f"{name}-t1n-inference.nii.gz")
            for run in ("one", "two"))
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj), err_msg=name)

  # Scoring: 2 processes against this process, on the same predictions.
  score_args = ["--config=configs/inpainting/evaluate.py:tiny",
                f"--config.evaluate.ground_truth={cases}"]
  run_main_processes(2, [*score_args, f"--workdir={tmp_path / 'scores_two'}",
                         f"--config.evaluate.predictions={tmp_path / 'two' / 'predictions'}"])
  config = evaluate_config.get_config("tiny")
  config.evaluate.ground_truth = str(cases)
  config.evaluate.predictions = str(tmp_path / "two" / "predictions")
  expected = scoring_job.evaluate_folder(config, tmp_path / "scores_one")
  got = json.loads((tmp_path / "scores_two" / "summary.json").read_text())
  assert got["failed"] == expected["failed"] and got["count"] == expected["count"] == len(names) - 1
  assert got["metrics"] == json.loads(json.dumps(expected["metrics"]))
  assert (tmp_path / "scores_two" / "scores.csv").read_text() == \
      (tmp_path / "scores_one" / "scores.csv").read_text()


def test_ensembler_evaluation_and_scoring_split_cases_over_two_processes(tiny_config, tmp_path):
  """Diff-Ensembler's evaluation (the cubic baseline) and file-space scoring on 2 processes:
  the outputs, rows and summary of one process (the MMD to float64 rounding); a case without
  a prediction is listed once. Both processes prepare the volumes into one empty cache,
  process 0 first (data_pipelines/processes.py)."""
  from data_pipelines import sources  # pylint: disable=g-import-not-at-top
  from configs.ensembler import score as score_config  # pylint: disable=g-import-not-at-top
  from sciimg_jax.ensembler import scoring_job  # pylint: disable=g-import-not-at-top
  splits = sources.source_dirs(tiny_config.data, tmp_path)  # the embedded subjects
  cases = tmp_path / "cases"
  for d in sorted(p for split in splits.values() for p in split.iterdir() if p.is_dir()):
    shutil.copytree(d, cases / d.name)
  names = sorted(p.name for p in cases.iterdir())
  args = ["--config=configs/ensembler/evaluate.py:sr+tiny", "--config.evaluate.methods=cubic",
          f"--config.evaluate.input_root={cases}"]
  run_main_processes(1, [*args, f"--workdir={tmp_path / 'one'}"])
  run_main_processes(2, [*args, f"--workdir={tmp_path / 'two'}"])
  rows = {run: [l.split(",") for l in (tmp_path / run / "cases.csv").read_text().splitlines()]
          for run in ("one", "two")}
  seconds = rows["one"][0].index("seconds")
  drop = lambda table: [r[:seconds] + r[seconds + 1:] for r in table]
  assert drop(rows["two"]) == drop(rows["one"]) and [r[0] for r in rows["two"][1:]] == names
  summaries = {run: json.loads((tmp_path / run / "summary.json").read_text())["cubic"]
               for run in ("one", "two")}
  one, two = summaries["one"], summaries["two"]
  for key in ("cases", "psnr", "ssim", "psnr_file", "ssim_file", "texture"):
    assert two[key] == one[key], key
  # The MMD is sum_v d_v^2, d = mean(truths) - mean(outputs), means of float64 sums of n
  # volumes of values <= 2 (normalised by the truth's range; cubic overshoots a little) that
  # the two processes add in another order: each d_v moves by <= 2 n eps64 x 2, the MMD by
  # 2 sum_v |d_v| that <= 2 sqrt(V x MMD) x that (Cauchy-Schwarz), V voxels.
  from configs.ensembler import evaluate as evaluate_config  # pylint: disable=g-import-not-at-top
  voxels = np.prod(evaluate_config.get_config("sr+tiny").data.volume_shape)
  step = 2 * len(names) * np.finfo(np.float64).eps * 2.0
  assert abs(two["mmd"] - one["mmd"]) <= 2 * np.sqrt(voxels * one["mmd"]) * step
  for name in names:
    a, b = (nib.load(tmp_path / run / "outputs" / "cubic" / name / f"{name}-t2f.nii.gz")
            for run in ("one", "two"))
    np.testing.assert_array_equal(np.asarray(b.dataobj), np.asarray(a.dataobj), err_msg=name)

  # File-space scoring; one case's prediction removed.
  (tmp_path / "two" / "outputs" / "cubic" / names[2] / f"{names[2]}-t2f.nii.gz").unlink()
  score_args = ["--config=configs/ensembler/score.py:sr+tiny", "--config.evaluate.methods=cubic",
                f"--config.evaluate.predictions={tmp_path / 'two' / 'outputs'}",
                f"--config.evaluate.ground_truth={cases}"]
  run_main_processes(2, [*score_args, f"--workdir={tmp_path / 'score_two'}"])
  config = score_config.get_config("sr+tiny")
  config.evaluate.methods = ("cubic",)
  config.evaluate.predictions = str(tmp_path / "two" / "outputs")
  config.evaluate.ground_truth = str(cases)
  expected = json.loads(json.dumps(scoring_job.evaluate_folder(config, tmp_path / "score_one")))
  got = json.loads((tmp_path / "score_two" / "summary.json").read_text())
  assert got == expected
  assert [f["case"] for f in got["methods"]["cubic"]["failed"]] == [names[2]]
  assert (tmp_path / "score_two" / "scores.csv").read_text() == \
      (tmp_path / "score_one" / "scores.csv").read_text()


def test_a_process_that_stops_with_an_error_stops_the_others_with_one_line(tmp_path):
  """Process 1's bad input stops it with its one line; process 0 follows with one line (not
  XLA's abort in JAX's shutdown barrier, nor a hang in the first collective). The bad input
  is process 1's workdir, a file: a config of its own would be refused on both processes
  before any work (`distributed.agree_on_config`, tested in test_distributed.py)."""
  env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = free_port()
  not_a_folder = tmp_path / "a_file"
  not_a_folder.write_text("not a folder")
  procs = [subprocess.Popen(
      [sys.executable, str(HERE.parent / "main.py"), "--config=configs/inpainting/axial.py:tiny",
       f"--workdir={not_a_folder if i else tmp_path / 'w'}",
       f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.train.num_steps=20",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
       "--multihost_timeout=20"],
      cwd=HERE.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  assert procs[1].returncode == 1 and errs[1].strip() == (
      f"error: {not_a_folder}: exists and is not a folder; pass a folder for the outputs"), errs[1]
  assert procs[0].returncode == distributed.PEER_FAILED_STATUS, errs[0][-3000:]
  last = errs[0].strip().splitlines()[-1]  # after the embedded data's progress bar, if any
  assert last.startswith("error: process 0: process 1 exited before the job finished"), errs[0]
  assert not any(w in errs[0] for w in ("Traceback", "Fatal Python error", "Terminating"))
