"""The scripts of bench/ as modules, for the tests of their functions.

bench/ is not a package: `load('fusion_ceiling')` imports bench/fusion_ceiling.py by path.
Import it as `import bench_scripts` (tests/ is on sys.path, as for `tolerances`).
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
