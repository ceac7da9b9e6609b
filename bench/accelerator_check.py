r"""The accelerator figures in one run: train step, MONAI ratio, whole-volume samplers, environment.

Every row runs an existing bench script with flags, in its own process (so that the device's
peak memory is the row's own), under a time limit: a row that runs past it is killed and
reported as timed out, a row that fails is reported with its last error line, and the run
goes on. The limits of the full run sum to under 8 minutes (`FULL_BUDGET_S`), and the run
stops starting rows when `--budget` is spent. Untrained, random weights throughout (timing
and memory do not depend on them).

  environment          device, jax / jaxlib, XLA flags (a process that only asks JAX)
  train-<dtype>-<row>  bench/train_memory.py: the trainer's step at the BraTS axial config
                       (configs/inpainting/axial.py: 256x256, batch 16, U-Net channels
                       64/128/256/256), float32 and bfloat16, each plain, remat and
                       accumulate-2: seconds per step (median), images per second, XLA's memory
                       analysis (`sciimg_jax.core.memory.compiled_bytes`) against the device's
                       `peak_bytes_in_use`
  train-monai          bench/unet_train_step.py --peer-only: MONAI's DiffusionModelUNet with the
                       same network, size and batch (float32; CUDA where torch sees it), and
                       the ratio to train-float32-plain; skipped if `--peer-python` lacks
                       torch or MONAI
  inpaint-config-steps, inpaint-quality-steps
                       bench/inpaint_volume.py: hierarchical inpainting of one 240x240x155 case
                       (reference networks, no resampling loops), seconds per volume, at the
                       steps of configs/inpainting/inpaint.py and at 3 (the step count that kept
                       quality: docs/benchmarks.md, "Inpainting at equal quality")
  fastwdm3d-published  fastWDM3D's published 1.81 s per volume (2 steps): a reference line,
                       not measured
  ensemble-average, ensemble-fused
                       bench/ensemble_step.py's average-jit and fused-jit rows: Diff-Ensembler's
                       samplers on a 192x192x152 volume at the steps of
                       configs/ensembler/super_resolution.py, seconds per volume

Writes accelerator_check.json and accelerator_check.md (the table, also printed) under the
output folder, each row's output under logs/ and the bench scripts' JSON under rows/.

    bash bench/accelerator_check.sh                               # under $OUT
    python bench/accelerator_check.py --out=/tmp/check            # the same
    python bench/accelerator_check.py --out=/tmp/check --dry-run  # tiny sizes on the CPU
    python bench/accelerator_check.py --plan [--dry-run]          # the rows, limits, commands
    python bench/accelerator_check.py --out=/tmp/check --rows=inpaint-config-steps,ensemble-fused

The dry run runs every row at tiny sizes on the CPU (JAX_PLATFORMS=cpu): it checks the
script, not the figures.
"""

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)

FULL_BUDGET_S = 480           # the whole run, on one H100: 8 minutes
QUALITY_STEPS = 3             # docs/benchmarks.md: 3 DDIM steps kept PSNR within 0.1 dB of 25
FASTWDM3D_S, FASTWDM3D_STEPS = 1.81, 2  # fastWDM3D's published seconds per volume, its steps
TRAIN_ROWS = ("plain", "remat", "accumulate-2")
DTYPES = ("float32", "bfloat16")

ENV_SCRIPT = r"""
import json, os, platform
from sciimg_jax.core import xla_flags
xla_flags.set_cpu_flags()  # as every bench script does before JAX starts
import jax, jaxlib
from sciimg_jax.core import memory
d = jax.devices()[0]
limit = memory.device_bytes()
try:
  info = jax.print_environment_info(return_string=True)
except Exception as e:  # pylint: disable=broad-except
  info = repr(e)
print(json.dumps(dict(
    platform=d.platform, device_kind=d.device_kind, device_count=jax.device_count(),
    platform_version=getattr(d.client, "platform_version", ""),
    device_gib=None if limit is None else limit / memory.GIB,
    jax=jax.__version__, jaxlib=jaxlib.__version__, python=platform.python_version(),
    xla_flags=os.environ.get("XLA_FLAGS", ""),
    jax_env={k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_PYTHON"))},
    environment_info=info)))
"""


@dataclasses.dataclass
class Row:
  name: str
  kind: str            # environment | train | monai | inpaint | reference | ensemble
  setting: str         # what it measures, for the table
  argv: list           # the command (empty for the reference line)
  limit_s: float       # the time limit of its process
  sizes: dict          # the sizes it runs at (for the JSON and the tests)


def sizes(dry_run):
  """The sizes of the full run (the configs') or of the dry run (tiny, CPU-sized)."""
  from configs.ensembler import super_resolution  # pylint: disable=g-import-not-at-top
  from configs.inpainting import axial  # pylint: disable=g-import-not-at-top
  from configs.inpainting import inpaint  # pylint: disable=g-import-not-at-top
  if dry_run:
    c = axial.get_config("tiny")
    return dict(train_config="configs/inpainting/axial.py:tiny", size=16, batch=4,
                channels=tuple(c.model.channels), train_steps=1, warmup=1,
                inpaint_scale=0.1, inpaint_steps=(2, 1), chunk_size=8,
                volume="24x32x24", ensemble_steps=1)
  c, s = axial.get_config(), inpaint.get_config().sampling
  return dict(train_config="configs/inpainting/axial.py", size=c.data.image_size[0],
              batch=c.data.batch_size, channels=tuple(c.model.channels), train_steps=5, warmup=2,
              inpaint_scale=1.0, inpaint_steps=(s.steps, QUALITY_STEPS), chunk_size=s.chunk_size,
              volume="192x192x152", ensemble_steps=super_resolution.get_config().sampling.steps)


# Time limits of the full run's rows, seconds (a GPU's first call compiles: most of a row).
FULL_LIMITS = {"environment": 15, "train-float32": 40, "train-bfloat16": 40, "train-monai": 40,
               "inpaint-config": 50, "inpaint-quality": 35, "ensemble-average": 35,
               "ensemble-fused": 45}
DRY_LIMITS = {"environment": 30, "train-float32": 60, "train-bfloat16": 60, "train-monai": 60,
              "inpaint-config": 90, "inpaint-quality": 90, "ensemble-average": 90,
              "ensemble-fused": 90}


def plan(dry_run, out, python=sys.executable, peer_python=sys.executable):
  """The rows of a run, in order, with their commands (writing under `out`) and limits."""
  z, limits = sizes(dry_run), DRY_LIMITS if dry_run else FULL_LIMITS
  bench = lambda script: [python, os.path.join(BENCH, script)]
  rows_dir = os.path.join(out, "rows")
  net = (f"{z['size']}x{z['size']}, batch {z['batch']}, U-Net "
         f"{'/'.join(str(c) for c in z['channels'])}")
  rows = [Row("environment", "environment", "device, jax / jaxlib, XLA flags",
              [python, "-c", ENV_SCRIPT], limits["environment"], {})]
  for dtype in DTYPES:
    for r in TRAIN_ROWS:
      name = f"train-{dtype}-{r}"
      argv = bench("train_memory.py") + [
          f"--config={z['train_config']}", f"--size={z['size']}", f"--batch={z['batch']}",
          f"--dtype={dtype}", f"--rows={r}", "--accumulate=2", f"--steps={z['train_steps']}",
          f"--json={os.path.join(rows_dir, name + '.json')}"]
      rows.append(Row(name, "train", f"train step, {dtype}, {r}; {net}", argv,
                      limits[f"train-{dtype}"],
                      dict(size=z["size"], batch=z["batch"], steps=z["train_steps"], dtype=dtype)))
  rows.append(Row("train-monai", "monai", f"MONAI DiffusionModelUNet train step, float32; {net}",
                  bench("unet_train_step.py") + [
                      f"--config={z['train_config']}", f"--size={z['size']}",
                      f"--batch={z['batch']}", f"--steps={z['train_steps']}",
                      f"--warmup={z['warmup']}", "--peer=monai", "--peer-only",
                      f"--peer-python={peer_python}",
                      f"--json={os.path.join(rows_dir, 'train-monai.json')}"],
                  limits["train-monai"], dict(size=z["size"], batch=z["batch"],
                                              steps=z["train_steps"], peer_python=peer_python)))
  shape = "x".join(str(int(round(n * z["inpaint_scale"]))) for n in (240, 240, 155))
  for steps, which in zip(z["inpaint_steps"], ("config", "quality")):
    name = f"inpaint-{which}-steps"
    why = "the inpaint config's steps" if which == "config" else "the steps that kept quality"
    if dry_run:
      why = "dry run"
    rows.append(Row(name, "inpaint", f"hierarchical inpainting, {shape}, {steps} step(s) a "
                    f"stage ({why}); reference 2D networks, no resampling loops, one jit",
                    bench("inpaint_volume.py") + [
                        f"--scale={z['inpaint_scale']}", f"--steps={steps}",
                        f"--chunk_size={z['chunk_size']}", "--skip=stage1,jit-all,python-loop",
                        f"--json={os.path.join(rows_dir, name + '.json')}"],
                    limits[f"inpaint-{which}"], dict(shape=shape, steps=steps)))
  rows.append(Row("fastwdm3d-published", "reference",
                  f"fastWDM3D, 240x240x155, {FASTWDM3D_STEPS} steps (published)", [], 0,
                  dict(seconds=FASTWDM3D_S, steps=FASTWDM3D_STEPS)))
  for method in ("average", "fused"):
    rows.append(Row(f"ensemble-{method}", "ensemble",
                    f"Diff-Ensembler {method} sampler, {z['volume']}, {z['ensemble_steps']} "
                    "step(s), one jit", bench("ensemble_step.py") + [
                        f"--one={method}-jit|{z['volume']}|0", f"--steps={z['ensemble_steps']}"],
                    limits[f"ensemble-{method}"],
                    dict(shape=z["volume"], steps=z["ensemble_steps"])))
  return rows


def shown_command(row):
  return "python -c ENV_SCRIPT" if row.kind == "environment" else shlex.join(row.argv)


def run_process(argv, limit_s, log_path, env):
  """Runs `argv` in its own process group for at most `limit_s`; (rc or None, stdout, stderr)."""
  proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=limit_s)
    rc = proc.returncode
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # its children (the peer's Python) too
    out, err = proc.communicate()
    rc = None
  with open(log_path, "w") as f:
    f.write(f"$ {shlex.join(argv)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
  return rc, out, err


def last_line(text):
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[-1][:160] if lines else ""


def read_figures(row, out, stdout):
  """The row's figures from the JSON its bench script wrote (or printed)."""
  if row.kind in ("environment", "ensemble"):
    return json.loads(stdout.strip().splitlines()[-1])
  with open(os.path.join(out, "rows", row.name + ".json")) as f:
    figures = json.load(f)
  return figures[0] if row.kind == "train" else figures


def has_torch(python, env, limit_s):
  try:
    subprocess.run([python, "-c", "import torch, monai"], check=True, capture_output=True,
                   timeout=limit_s, env=env)
    return True
  except (subprocess.SubprocessError, OSError):
    return False


def driver_env(dry_run, cache_dir):
  """What the driver sets for its rows: the import path; one compilation cache for the run
  (rows share programs, e.g. the parameter initialisers: compiled once, read back by the next
  row; a row's own step is compiled before it is timed either way); on a dry run the CPU and
  the fast-compiling non-partitionable threefry (as the tests use: tests/conftest.py)."""
  env = dict(PYTHONPATH=os.pathsep.join(filter(None, [ROOT, BENCH,
                                                      os.environ.get("PYTHONPATH", "")])),
             JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2")
  if dry_run:
    env.update(JAX_PLATFORMS="cpu", JAX_THREEFRY_PARTITIONABLE="0")
  return env


def run(args, rows):
  """Runs `rows` within `args.budget` seconds; the result of each."""
  cache_dir = tempfile.mkdtemp(prefix="accelerator_check_jax_cache_")
  try:
    return run_rows(args, rows, dict(os.environ, **driver_env(args.dry_run, cache_dir)))
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)


def run_rows(args, rows, env):
  os.makedirs(os.path.join(args.out, "rows"), exist_ok=True)
  os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
  deadline = time.monotonic() + args.budget
  results = []
  for row in rows:
    r = dict(name=row.name, kind=row.kind, setting=row.setting, limit_s=row.limit_s,
             sizes=row.sizes, command=shlex.join(row.argv), wall_s=None, figures=None)
    results.append(r)
    if row.kind == "reference":
      r.update(status="reference", note="published, not measured here",
               figures=dict(seconds_per_volume=FASTWDM3D_S, steps=FASTWDM3D_STEPS))
      continue
    left = deadline - time.monotonic()
    limit = min(row.limit_s, left)
    if limit < min(row.limit_s, 10):
      r.update(status="not run", note=f"the run's budget of {args.budget:.0f} s is spent")
      continue
    start = time.monotonic()
    if row.kind == "monai" and not has_torch(args.peer_python, env, limit):
      r.update(status="skipped", note=f"torch or MONAI is not installed for {args.peer_python}",
               wall_s=time.monotonic() - start)
      continue
    print(f"[{row.name}] limit {limit:.0f} s: {shown_command(row)[:200]}", flush=True)
    rc, stdout, stderr = run_process(row.argv, limit, os.path.join(args.out, "logs",
                                                                   row.name + ".log"), env)
    r["wall_s"] = time.monotonic() - start
    if rc is None:
      r.update(status="timed out", note=f"stopped at its limit of {limit:.0f} s")
    elif rc:
      r.update(status="failed", note=f"rc {rc}: {last_line(stderr) or last_line(stdout)}")
    else:
      try:
        r.update(status="ok", note="", figures=read_figures(row, args.out, stdout))
      except (OSError, ValueError, IndexError, KeyError) as e:
        r.update(status="failed", note=f"no figures: {e!r}"[:160])
    if row.kind == "monai" and r["status"] == "ok" and not r["figures"].get("monai"):
      r.update(status="failed", note=f"the peer did not run: {last_line(stdout)}")
    print(f"[{row.name}] {r['status']} in {r['wall_s']:.1f} s {r['note']}", flush=True)
  return results


def gib(x):
  return "" if x is None else f"{x:.2f}" if x >= 0.1 else f"{x:.2g}"


def cells(r, by_name):
  """(time, rate, XLA GiB, peak GiB) cells of a result `r` for the Markdown table."""
  f = r["figures"]
  if r["status"] not in ("ok", "reference") or f is None:
    return "", "", "", ""
  if r["kind"] == "train":
    s = f["seconds_per_step"]
    if s is None:
      return "not run: does not fit", "", gib(f["xla_gib"]), ""
    peak = gib(f["peak_gib"]) if f["peak_gib"] is not None else f"n/a ({f['backend']})"
    return f"{s:.4f} s / step", f"{f['batch'] / s:.1f} images/s", gib(f["xla_gib"]), peak
  if r["kind"] == "monai":
    m, s = f["monai"], f["monai"]["median_ms"] / 1e3
    ours = by_name.get("train-float32-plain", {})
    ratio = ""
    if ours.get("status") == "ok" and ours["figures"].get("seconds_per_step"):
      ratio = (f"; ours (train-float32-plain) / MONAI = "
               f"{ours['figures']['seconds_per_step'] / s:.2f}")
    return (f"{s:.4f} s / step", f"{f['batch'] / s:.1f} images/s{ratio} (torch {m['torch']}, "
            f"{m['device']})", "", "")
  if r["kind"] == "inpaint":
    jit = f["rows"]["jit"]
    return (f"{jit['total_s']:.2f} s / volume", f"compile + first call {jit['first_s']:.1f} s",
            "", "")
  if r["kind"] == "reference":
    return f"{f['seconds_per_volume']:.2f} s / volume", "", "", ""
  if r["kind"] == "ensemble":
    s = f["seconds_per_step"]
    if s is None:
      return "not run: does not fit", "", gib(f["xla_gib"]), ""
    steps = r["sizes"]["steps"]
    return (f"{s * steps:.2f} s / volume",
            f"{s:.3f} s / step; first call {f['first_call_s']:.1f} s",
            gib(f["xla_gib"]), f"{gib(f['peak_gib'])} ({f['memory']}, {f['backend']})")
  return "", "", "", ""


def markdown(report):
  """The report as Markdown: the environment, then one table of the rows."""
  by_name = {r["name"]: r for r in report["rows"]}
  e = by_name.get("environment", {})
  lines = [f"Accelerator check, {report['date']}, {report['mode']} run, {report['wall_s']:.0f} s "
           f"(budget {report['budget_s']:.0f} s).", ""]
  if e.get("status") == "ok":
    env = e["figures"]
    memory = "" if env["device_gib"] is None else f", {env['device_gib']:.1f} GiB for JAX"
    lines += [f"- device: {env['device_count']} x {env['device_kind']} ({env['platform']}"
              f"{memory}; {env['platform_version']})".replace("\n", " "),
              f"- jax {env['jax']}, jaxlib {env['jaxlib']}, Python {env['python']}",
              f"- XLA_FLAGS: `{env['xla_flags']}`" + (
                  f"; {', '.join(f'{k}={v}' for k, v in env['jax_env'].items())}"
                  if env["jax_env"] else "")]
  else:
    lines.append(f"- environment: {e.get('status', 'not run')} {e.get('note', '')}")
  lines += ["", "| row | setting | time | rate | XLA memory (GiB) | peak in use (GiB) | status |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in report["rows"]:
    if r["kind"] == "environment":
      continue
    status = r["status"] + (f" ({r['wall_s']:.0f} s)" if r["wall_s"] is not None else "")
    status += f": {r['note']}" if r.get("note") else ""
    row = [r["name"], r["setting"], *cells(r, by_name), status]
    lines.append("| " + " | ".join(c.replace("|", "/") for c in row) + " |")
  return "\n".join(lines) + "\n"


class Parser(argparse.ArgumentParser):
  """Bad flags stop with one line (no usage block)."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv=None):
  p = Parser(prog="accelerator_check", description=__doc__.splitlines()[0])
  p.add_argument("folder", nargs="?", default="", help="output folder (or --out; default $OUT)")
  p.add_argument("--out", default="", help="output folder (default: $OUT)")
  p.add_argument("--dry-run", action="store_true", help="every row at tiny sizes on the CPU")
  p.add_argument("--rows", default="", help="rows to run, comma-separated (default: all)")
  p.add_argument("--budget", type=float, default=FULL_BUDGET_S,
                 help="seconds for the whole run; no row starts past it")
  p.add_argument("--peer-python", default=sys.executable,
                 help="Python with torch and MONAI for train-monai")
  p.add_argument("--plan", action="store_true", help="print the rows and limits, run nothing")
  args = p.parse_args(argv)
  if args.folder and args.out and args.folder != args.out:
    p.error(f"two output folders: {args.folder!r} and --out={args.out!r}; give one")
  args.out = args.out or args.folder or os.environ.get("OUT", "")
  if not args.out and not args.plan:
    p.error("no output folder: give one (or --out=DIR), or set OUT")
  if not args.budget > 0:
    p.error(f"--budget must be a positive number of seconds, got {args.budget:g}")
  if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
    p.error(f"--out={args.out!r} is a file, not a folder")
  names = [r.name for r in plan(args.dry_run, args.out or ".")]
  args.rows = [n for n in args.rows.split(",") if n] or names
  unknown = [n for n in args.rows if n not in names]
  if unknown:
    p.error(f"unknown row(s) {', '.join(unknown)}; the rows are {', '.join(names)}")
  if "environment" not in args.rows:
    args.rows.insert(0, "environment")  # every report says where it ran
  return args


def main(argv=None):
  args = parse_args(argv)
  rows = [r for r in plan(args.dry_run, args.out or ".", peer_python=args.peer_python)
          if r.name in args.rows]
  if args.plan:
    for r in rows:
      print(f"{r.name:<28}{r.limit_s:>5.0f} s  {shown_command(r) or '(a published figure)'}")
    print(f"{'sum of limits':<28}{sum(r.limit_s for r in rows):>5.0f} s  (budget "
          f"{args.budget:.0f} s)")
    return
  start = time.monotonic()
  results = run(args, rows)
  report = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                mode="dry" if args.dry_run else "full", budget_s=args.budget,
                wall_s=time.monotonic() - start,
                driver_env={k: v for k, v in driver_env(args.dry_run, "(a temporary folder)")
                            .items() if k != "PYTHONPATH"}, rows=results)
  table = markdown(report)
  with open(os.path.join(args.out, "accelerator_check.json"), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(args.out, "accelerator_check.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"wrote {os.path.join(args.out, 'accelerator_check.json')} and accelerator_check.md")


if __name__ == "__main__":
  main()
