"""main.py: bad input stops with one clear line, no traceback."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, *fragments):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
  for fragment in fragments:
    assert fragment in proc.stderr, proc.stderr[-2000:]


def test_unknown_config_key(tmp_path):
  proc = run_main("--config=configs/inpainting/axial.py:tiny", f"--workdir={tmp_path}",
                  "--config.train.num_stepz=3")
  assert_one_line_error(proc, "num_stepz")


def test_a_config_key_given_twice_is_refused(tmp_path):
  """A tuple override given twice used to concatenate (3 members twice: '6 are configured')."""
  proc = run_main("--config=configs/ensembler/evaluate.py:sr+tiny", f"--workdir={tmp_path}",
                  "--config.evaluate.members=a,b", "--config.evaluate.members", "c,d",
                  "--config.seed=1")
  assert_one_line_error(proc, "--config.evaluate.members: given more than once")
  assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_unreachable_coordinator_fails_in_bounded_time_with_one_line(tmp_path):
  with __import__("socket").socket() as s:  # a free port that nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  start = time.monotonic()
  proc = run_main("--config=configs/inpainting/axial.py:tiny", f"--workdir={tmp_path}",
                  f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                  "--process_id=1", "--multihost_timeout=2")
  assert time.monotonic() - start < 120
  assert_one_line_error(proc, f"127.0.0.1:{port}: the coordinator cannot be reached",
                        "after 2 s")
  assert not (tmp_path / "checkpoints").exists()


def test_incomplete_multihost_flags_are_refused(tmp_path):
  proc = run_main("--config=configs/inpainting/axial.py:tiny", f"--workdir={tmp_path}",
                  "--coordinator_address=127.0.0.1:12345")
  assert_one_line_error(proc, "give all three")


def test_unknown_variant(tmp_path):
  proc = run_main("--config=configs/inpainting/axial.py:huge", f"--workdir={tmp_path}")
  assert_one_line_error(proc, "huge")


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_data_folder(tmp_path, make):
  root = tmp_path / "brats"
  if make == "empty":
    root.mkdir()
  proc = run_main("--config=configs/inpainting/axial.py:tiny", f"--workdir={tmp_path / 'w'}",
                  f"--config.data.root={root}")
  assert_one_line_error(proc, str(root), "not found" if make == "missing" else "no case folders")


@pytest.mark.parametrize("config", ["configs/inpainting/axial.py:tiny",
                                    "configs/inpainting/inpaint.py:tiny",
                                    "configs/inpainting/evaluate.py:tiny"])
def test_workdir_that_is_a_file(tmp_path, config):
  workdir = tmp_path / "a_file"
  workdir.write_text("not a folder")
  proc = run_main(f"--config={config}", f"--workdir={workdir}")
  assert_one_line_error(proc, str(workdir), "exists and is not a folder")


def test_bad_pipeline_value_fails_at_once(tmp_path):
  proc = run_main("--config=configs/inpainting/inpaint.py:tiny", f"--workdir={tmp_path}",
                  f"--config.inpaint.input_dir={tmp_path}", "--config.sampling.stage2.t0=1.5")
  assert_one_line_error(proc, "sampling.stage2.t0", "(0, 1]")


def interrupt_main(args, ready):
  """Starts main.py, sends SIGINT once `ready()` is true; returns (exit status, stderr)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not ready() and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=240)
  assert "Traceback" not in stderr and "Fatal Python error" not in stderr, stderr[-2000:]
  return proc.returncode, stderr


def test_ctrl_c_during_training_stops_cleanly(tmp_path, data_cache):
  workdir = tmp_path / "w"
  status, stderr = interrupt_main(
      ["--config=configs/inpainting/axial.py:tiny", f"--workdir={workdir}",
       f"--config.data.cache_dir={data_cache}", "--config.train.num_steps=100000",
       "--config.train.eval_every=0"],
      ready=lambda: (workdir / "checkpoints" / "2").is_dir())
  assert status == 130, stderr[-2000:]
  assert "last complete checkpoint: step" in stderr
  # one line: the Ctrl-C notice, completed by what was kept (the README's promise)
  lines = [l for l in stderr.splitlines() if "Ctrl-C" in l or "stopped" in l]
  assert len(lines) == 1 and "Ctrl-C: stopping" in lines[0] and "stopped:" in lines[0], stderr
  steps = [p.name for p in (workdir / "checkpoints").iterdir()]
  assert steps and all(s.isdigit() for s in steps), steps  # no half-written checkpoint


def test_ctrl_c_during_inpainting_stops_cleanly(tmp_path, data_cache, slice_model_dirs):
  eval_dir = next(data_cache.glob("embedded-4mm-seed*/eval"))
  workdir = tmp_path / "w"
  status, stderr = interrupt_main(
      ["--config=configs/inpainting/inpaint.py:tiny", f"--workdir={workdir}",
       f"--config.inpaint.input_dir={eval_dir}",
       f"--config.pipeline.axial_workdir={slice_model_dirs['axial']}",
       f"--config.pipeline.coronal_workdir={slice_model_dirs['coronal']}"],
      ready=lambda: bool(list(workdir.glob("predictions/*/*-t1n-inference.nii.gz"))))
  assert status == 130, stderr[-2000:]
  assert "finished cases kept" in stderr
  assert not [p for p in workdir.rglob(".*")]  # no temporary files


def test_every_config_file_names_a_job():
  """Each config file with `get_config` (and its `tiny` variant, where it has one) runs a job
  of `sciimg_jax.jobs.JOBS`."""
  import importlib  # noqa: PLC0415
  from sciimg_jax import jobs  # noqa: PLC0415
  files = sorted((ROOT / "configs").rglob("*.py"))
  checked = []
  for path in files:
    module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if not hasattr(module, "get_config"):
      continue
    for variant in ("", "tiny"):
      try:
        config = module.get_config(variant)
      except ValueError:  # no such variant
        continue
      assert config.job in jobs.JOBS, f"{path}:{variant} names job {config.job!r}"
    checked.append(path.name)
  assert {"quickstart.py", "study.py", "evaluate.py", "inpaint.py"} <= set(checked)


def test_ctrl_c_while_starting_stops_at_once_with_one_line(tmp_path):
  """A Ctrl-C while JAX loads was swallowed (the job ran to rc 0) or gave a traceback."""
  start = time.time()
  status, stderr = interrupt_main(
      ["--config=configs/inpainting/axial.py:tiny", f"--workdir={tmp_path / 'w'}",
       "--config.train.num_steps=100000"], ready=lambda: time.time() > start + 1.0)
  assert status == 130, stderr[-2000:]
  assert "Exception ignored" not in stderr and "KeyboardInterrupt" not in stderr, stderr
  assert len([l for l in stderr.splitlines() if "stopped" in l]) == 1, stderr
