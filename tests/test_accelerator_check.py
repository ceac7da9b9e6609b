"""bench/accelerator_check.py (issue 35): its flags, the plan of rows and sizes of the full and
the dry run, the time limits, and that a row that times out or fails is reported and the run
goes on. Nothing here compiles a network: the rows themselves run in `--dry-run`."""

import os
import pathlib
import subprocess
import sys

import pytest

import bench_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
  return bench_scripts.load("accelerator_check")


def one_line_error(check, capsys, argv):
  with pytest.raises(SystemExit) as e:
    check.parse_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1, err
  return err


@pytest.mark.parametrize("argv, says", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--out=/tmp/x", "--rows=train-float32-plain,nope"], "unknown row(s) nope"),
    (["--out=/tmp/x", "--budget=0"], "--budget must be a positive"),
    (["--out=/tmp/x", "--budget=soon"], "invalid float value"),
    (["/tmp/a", "--out=/tmp/b"], "two output folders"),
    ([], "no output folder"),
])
def test_bad_flags_stop_with_one_line(check, capsys, monkeypatch, argv, says):
  monkeypatch.delenv("OUT", raising=False)
  err = one_line_error(check, capsys, argv)
  assert says in err and err.startswith("accelerator_check: error:")


def test_out_is_a_file(check, capsys, tmp_path):
  (tmp_path / "f").write_text("")
  assert "is a file" in one_line_error(check, capsys, [f"--out={tmp_path / 'f'}"])


def test_output_folder_from_out_argument_or_flag(check, monkeypatch):
  monkeypatch.setenv("OUT", "/tmp/from-env")
  assert check.parse_args([]).out == "/tmp/from-env"
  assert check.parse_args(["/tmp/given"]).out == "/tmp/given"
  assert check.parse_args(["--out=/tmp/flag"]).out == "/tmp/flag"
  args = check.parse_args(["--rows=inpaint-config-steps"])
  assert args.rows == ["environment", "inpaint-config-steps"]  # every report says where


def test_shell_script_passes_flags_through():
  out = subprocess.run(["bash", str(ROOT / "bench" / "accelerator_check.sh"), "--nope"],
                       capture_output=True, text=True,
                       env=dict(os.environ, PYTHON=sys.executable), timeout=60)
  assert out.returncode == 2
  assert out.stderr.strip() == "accelerator_check: error: unrecognized arguments: --nope"


def names(rows):
  return [r.name for r in rows]


def test_full_plan_rows_and_sizes(check):
  rows = check.plan(False, "/out")
  assert names(rows) == [
      "environment", "train-float32-plain", "train-float32-remat", "train-float32-accumulate-2",
      "train-bfloat16-plain", "train-bfloat16-remat", "train-bfloat16-accumulate-2",
      "train-monai", "inpaint-config-steps", "inpaint-quality-steps", "fastwdm3d-published",
      "ensemble-average", "ensemble-fused"]
  by = {r.name: r for r in rows}
  # The BraTS axial config: 256x256, batch 16, channels 64/128/256/256.
  for name in names(rows)[1:7]:
    argv = by[name].argv
    assert argv[1].endswith("bench/train_memory.py")
    assert "--config=configs/inpainting/axial.py" in argv
    assert {"--size=256", "--batch=16", "--accumulate=2"} <= set(argv)
    assert "64/128/256/256" in by[name].setting
  assert "--dtype=bfloat16" in by["train-bfloat16-remat"].argv
  assert "--rows=accumulate-2" in by["train-float32-accumulate-2"].argv
  monai = by["train-monai"].argv
  assert {"--peer=monai", "--peer-only", "--size=256", "--batch=16"} <= set(monai)
  # 240x240x155 at the inpaint config's steps (50) and at the 3 that kept quality.
  assert by["inpaint-config-steps"].sizes == dict(shape="240x240x155", steps=50)
  assert by["inpaint-quality-steps"].sizes == dict(shape="240x240x155", steps=3)
  assert "--scale=1.0" in by["inpaint-config-steps"].argv
  assert by["fastwdm3d-published"].sizes == dict(seconds=1.81, steps=2)
  assert by["fastwdm3d-published"].argv == []
  for method in ("average", "fused"):
    argv = by[f"ensemble-{method}"].argv
    assert f"--one={method}-jit|192x192x152|0" in argv and "--steps=10" in argv
  assert all(f"--json=/out/rows/{r.name}.json" in r.argv for r in rows
             if r.kind in ("train", "monai", "inpaint"))


def test_dry_plan_same_rows_tiny_sizes_on_cpu(check):
  full, dry = check.plan(False, "/out"), check.plan(True, "/out")
  assert names(dry) == names(full)
  by = {r.name: r for r in dry}
  assert "--config=configs/inpainting/axial.py:tiny" in by["train-float32-plain"].argv
  assert "--size=16" in by["train-bfloat16-remat"].argv
  assert by["inpaint-config-steps"].sizes["shape"] == "24x24x16"
  assert "--one=fused-jit|24x32x24|0" in by["ensemble-fused"].argv
  assert check.driver_env(True, "/c")["JAX_PLATFORMS"] == "cpu"
  assert "JAX_PLATFORMS" not in check.driver_env(False, "/c")
  assert "JAX_THREEFRY_PARTITIONABLE" not in check.driver_env(False, "/c")


def test_full_limits_sum_below_eight_minutes(check):
  rows = check.plan(False, "/out")
  assert sum(r.limit_s for r in rows) < 8 * 60
  assert check.FULL_BUDGET_S <= 8 * 60
  assert all(r.limit_s > 0 for r in rows if r.kind != "reference")
  assert check.parse_args(["--out=/tmp/x"]).budget == check.FULL_BUDGET_S


def test_timed_out_and_failed_rows_are_reported_and_the_run_goes_on(check, tmp_path):
  python = sys.executable
  rows = [
      check.Row("environment", "environment", "sleeps", [python, "-c", "import time; "
                                                         "time.sleep(30)"], 1, {}),
      check.Row("train-float32-plain", "train", "fails",
                [python, "-c", "import sys; sys.exit('boom: the last line')"], 20, {}),
      check.Row("ensemble-fused", "ensemble", "prints its JSON",
                [python, "-c", "print('{\"seconds_per_step\": 0.5, \"first_call_s\": 2.0, "
                 "\"xla_gib\": 1.0, \"peak_gib\": 0.75, \"memory\": \"device peak\", "
                 "\"backend\": \"gpu\"}')"], 20, dict(steps=4)),
      check.Row("later", "environment", "runs after them", [python, "-c", "print('{}')"], 20,
                {}),
  ]
  args = check.parse_args([str(tmp_path), "--budget=60"])
  results = check.run(args, rows)
  status = {r["name"]: r["status"] for r in results}
  assert status == {"environment": "timed out", "train-float32-plain": "failed",
                    "ensemble-fused": "ok", "later": "ok"}
  assert results[0]["wall_s"] < 10
  assert "boom: the last line" in results[1]["note"]
  assert (tmp_path / "logs" / "train-float32-plain.log").exists()
  table = check.markdown(dict(date="d", mode="dry", budget_s=60, wall_s=3, rows=results))
  assert "environment: timed out" in table
  assert "| ensemble-fused | prints its JSON | 2.00 s / volume | 0.500 s / step" in table
  assert "failed" in table and table.count("\n| ") == 4  # header, rule, two rows


def test_budget_spent_rows_are_not_run(check, tmp_path):
  rows = [check.Row("environment", "environment", "", [sys.executable, "-c", "0"], 5, {}),
          check.Row("fastwdm3d-published", "reference", "published", [], 0, {})]
  args = check.parse_args([str(tmp_path), "--budget=0.5"])
  results = check.run(args, rows)
  assert [r["status"] for r in results] == ["not run", "reference"]
  table = check.markdown(dict(date="d", mode="full", budget_s=0.5, wall_s=0, rows=results))
  assert "| fastwdm3d-published | published | 1.81 s / volume |" in table
