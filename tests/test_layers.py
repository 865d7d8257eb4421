"""The import graph: one direction (core -> setup -> drivers -> command line), no cycles, and the
light modules stay light (config validation without jax; the sampler with jax and numpy only)."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

# Layer of each module (a prefix ending in "." covers a package), and the layers it may import.
LAYERS = {
    # compute: the backend's jit and convolution (jdiff.cpu: the CPU's, chosen by compute).
    "base": ("jdiff", "jdiff.choices", "jdiff.errors", "jdiff.console", "jdiff.compute",
             "jdiff.cpu."),
    "config": ("jdiff.config_lib", "jdiff.models.presets", "jdiff.samplers"),
    "core": ("jdiff.schedules", "jdiff.diffusion", "jdiff.objectives", "jdiff.sampling",
             "jdiff.depth"),
    "models": ("jdiff.models", "jdiff.models.unet", "jdiff.models.layers", "jdiff.models.gan",
               "jdiff.models.diffwave"),
    "infra": ("jdiff.parallel", "jdiff.checkpoint", "jdiff.data", "jdiff.audio", "jdiff.images",
              "jdiff.progress", "jdiff.files",
              "jdiff.evaluation."),
    "setup": ("jdiff.builders", "jdiff.surrogate", "jdiff.conditioning"),
    "drivers": ("jdiff.drivers.",),
    "tools": ("jdiff.tools.",),
    "cli": ("jdiff.main",),
}
MAY_IMPORT = {
    "base": {"base"},
    "config": {"base", "config"},                  # no jax: a bad flag fails at once
    "core": {"base", "core"},                      # no config, no mesh, no I/O
    "models": {"base", "core", "models"},
    "infra": {"base", "infra"},
    "setup": {"base", "config", "core", "models", "infra", "setup"},
    "drivers": {"base", "config", "core", "models", "infra", "setup", "drivers"},
    "tools": {"base", "config", "core", "models", "infra", "setup", "drivers", "tools"},
    "cli": {"base", "config", "core", "models", "infra", "setup", "drivers", "tools", "cli"},
}


def layer_of(module: str) -> str:
  for layer, names in LAYERS.items():
    for name in names:
      if module == name.rstrip(".") or (name.endswith(".") and module.startswith(name)):
        return layer
  raise AssertionError(f"{module} has no layer in tests/test_layers.py: add it")


def jdiff_modules():
  modules = {}
  for root, _, files in os.walk(os.path.join(REPO, "jdiff")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        modules[module.removesuffix(".__init__")] = path
  return modules


def imports_of(path: str, modules) -> set:
  """The jdiff modules a file imports anywhere (top level or inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from jdiff.a import x` imports the module jdiff.a.x when it is one, else a name of
      # jdiff.a; jdiff itself defines no names but __version__ (so a stale `from jdiff import
      # train` shows up as the module jdiff.train, which has no layer).
      names = [f"{node.module}.{alias.name}"
               if f"{node.module}.{alias.name}" in modules
               or (node.module == "jdiff" and alias.name != "__version__")
               else node.module for alias in node.names]
    else:
      continue
    found.update(name for name in names if name.split(".")[0] == "jdiff")
  return found


def import_graph():
  modules = jdiff_modules()
  return {module: imports_of(path, modules) - {module} for module, path in modules.items()}


def test_every_import_points_down_the_layers():
  upward = []
  for module, imported in sorted(import_graph().items()):
    for target in sorted(imported):
      if layer_of(target) not in MAY_IMPORT[layer_of(module)]:
        upward.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
  assert not upward, "\n".join(upward)


def test_import_graph_has_no_cycles():
  graph = import_graph()
  visiting, done, cycles = set(), set(), []

  def visit(module, path):
    if module in done:
      return
    if module in visiting:
      cycles.append(" -> ".join(path[path.index(module):] + [module]))
      return
    visiting.add(module)
    for target in sorted(graph.get(module, ())):
      visit(target, path + [module])
    visiting.discard(module)
    done.add(module)

  for module in sorted(graph):
    visit(module, [])
  assert not cycles, "\n".join(cycles)


def test_layer_table_catches_an_upward_import():
  # The check itself: a core module importing the config would be reported.
  assert "config" not in MAY_IMPORT[layer_of("jdiff.sampling")]
  assert layer_of("jdiff.drivers.train") == "drivers" and layer_of("jdiff.tools.bench") == "tools"
  with pytest.raises(AssertionError, match="has no layer"):
    layer_of("jdiff.somewhere_new")


@pytest.mark.parametrize("module, forbidden", [
    ("jdiff.config_lib", ("jax", "flax", "optax", "orbax", "tensorflow")),
    ("jdiff.sampling", ("flax", "optax", "orbax", "tensorflow", "ml_collections", "clu")),
])
def test_light_modules_load_nothing_heavy(module, forbidden):
  code = (f"import sys, {module}\n"
          f"print([m for m in {forbidden!r} if m in sys.modules])")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]", f"{module} loads {result.stdout.strip()}"
