"""The direction of every import in the project, checked by reading the source.

The allowed directions, stated once (a module may always import its own package):

  sciimg_jax.core     -> sciimg_jax.core only: no method, no data_pipelines
  data_pipelines      -> data_pipelines and the core utilities in DATA_MAY_USE
  a method            -> the core and data_pipelines; never another method
  sciimg_jax.jobs     -> anything (it registers every method's jobs for main.py)
  configs             -> configs only

and what inference must not run (`NOT_REACHED`, followed through every import on the way):
the sampling code and `trained_models` never the trainer; the inpainting inference never
the slice task or its training examples.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One sub-package per method; add new ones here.
METHODS = ("sciimg_jax.inpainting", "sciimg_jax.ir", "sciimg_jax.ensembler")
DATA_MAY_USE = ("sciimg_jax.core.errors", "sciimg_jax.core.nifti", "sciimg_jax.core.intensity",
                "sciimg_jax.core.atomic_files", "sciimg_jax.core.volumes",
                "sciimg_jax.core.slice_context")
OWN = ("sciimg_jax", "data_pipelines", "configs")


def within(name, prefixes):
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def allowed(module):
  """The prefixes of project modules that `module` may import."""
  if within(module, ("sciimg_jax.core",)):
    return ("sciimg_jax.core",)
  if within(module, ("data_pipelines",)):
    return ("data_pipelines",) + DATA_MAY_USE
  for method in METHODS:
    if within(module, (method,)):
      return (method, "sciimg_jax.core", "data_pipelines")
  if module == "sciimg_jax.jobs":
    return OWN
  if within(module, ("configs",)):
    return ("configs",)
  if module == "sciimg_jax":
    return ()
  raise AssertionError(f"{module} belongs to no layer: add it to METHODS or to this test")


def module_name(path):
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path):
  """(line, imported module) for every import of a project module, top level or not."""
  tree = ast.parse(path.read_text(), filename=str(path))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      # `from pkg import mod` imports pkg.mod when mod is a module: count the longer name.
      names = [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for name in names:
      if within(name, OWN):
        yield node.lineno, name


SOURCES = sorted(p for top in OWN for p in (ROOT / top).rglob("*.py"))


def test_every_package_is_found():
  names = {module_name(p) for p in SOURCES}
  assert {"sciimg_jax.core.trainer", "sciimg_jax.inpainting.volume_inpainter",
          "data_pipelines.brats_layout", "configs.base"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_the_allowed_way(path):
  module = module_name(path)
  ok = allowed(module)
  wrong = [f"{path.relative_to(ROOT)}:{line} imports {name}"
           for line, name in project_imports(path) if not within(name, ok)]
  assert not wrong, "\n".join(wrong)


def test_the_rule_catches_a_wrong_arrow(tmp_path):
  probe = tmp_path / "probe.py"  # read as if it were sciimg_jax/core/probe.py
  probe.write_text("from sciimg_jax.inpainting import volume_inpainter\n"
                   "def f():\n  from data_pipelines import brats_layout\n")
  ok = allowed("sciimg_jax.core.probe")
  found = [name for _, name in project_imports(probe) if not within(name, ok)]
  assert found == ["sciimg_jax.inpainting.volume_inpainter", "data_pipelines.brats_layout"]


MODULES = {module_name(p): p for p in SOURCES}


def imported_modules(module):
  """The project modules `module` imports (a name `pkg.mod.attr` counts as `pkg.mod`), with
  the packages above each (importing `a.b.c` runs `a` and `a.b` first)."""
  found = set()
  for _, name in project_imports(MODULES[module]):
    while name not in MODULES and "." in name:
      name = name.rsplit(".", 1)[0]
    while name:
      if name in MODULES:
        found.add(name)
      name = name.rpartition(".")[0]
  return found - {module}


def reachable(start):
  """Every project module that importing `start` runs (its imports, transitively)."""
  seen, todo = set(), [start]
  while todo:
    for name in imported_modules(todo.pop()) - seen:
      seen.add(name)
      todo.append(name)
  return seen


# Inference stands without training: rebuilding and sampling trained networks never runs the
# training loop, and inpainting inference never the code that cuts training examples (what a
# model's channels, prior and residual mean is `inpainting.chain_space`, which both import).
SAMPLING = [name for name in MODULES if within(name, ("sciimg_jax.core.diffusion",))]
SAMPLING.append("sciimg_jax.core.trained_models")
NOT_REACHED = {
    **{name: ("sciimg_jax.core.trainer",) for name in SAMPLING},
    **{name: ("sciimg_jax.core.trainer", "sciimg_jax.core.slice_task",
              "sciimg_jax.inpainting.slice_inputs", "sciimg_jax.inpainting.training_volumes")
       for name in ("sciimg_jax.inpainting.volume_inpainter", "sciimg_jax.inpainting.inpaint_job")},
}


def test_reachable_follows_imports_through_modules():
  assert {"sciimg_jax.core.trainer", "sciimg_jax.inpainting.training_volumes",
          "sciimg_jax.core.errors", "sciimg_jax"} <= reachable("sciimg_jax.inpainting.slice_inputs")


@pytest.mark.parametrize("module", sorted(NOT_REACHED))
def test_inference_does_not_import_training(module):
  wrong = [name for name in NOT_REACHED[module] if name in reachable(module)]
  assert not wrong, f"importing {module} runs {wrong}"
