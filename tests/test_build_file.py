"""BUILD stays accurate: every module, entry point and test is declared."""

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfkf", "beam_pipelines", "serving", "online", "benchmarks", "deploy")


def _targets():
  """Evaluates BUILD with stand-ins for the Bazel rules; returns {rule: [kwargs]}."""
  rules = {"py_library": [], "py_binary": [], "py_test": []}
  env = {name: (lambda kind: lambda **kw: rules[kind].append(kw))(name) for name in rules}
  env.update(load=lambda *a: None, requirement=lambda name: f"@pypi//{name}", glob=lambda p: [],
             package=lambda **kw: None)
  with open(os.path.join(ROOT, "BUILD")) as f:
    exec(compile(f.read(), "BUILD", "exec"), env)
  return rules


def _declared(kind):
  return {src for target in _targets()[kind] for src in target["srcs"]}


def _files(pattern):
  return {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)}


def test_every_library_module_is_in_a_py_library():
  modules = set().union(*(_files(f"{p}/**/*.py") for p in PACKAGES))
  assert modules - _declared("py_library") == set()
  assert _declared("py_library") - modules - _files("tests/*.py") == set(), "BUILD names missing files"


def test_every_entry_point_is_a_py_binary():
  entry_points = set()
  for path in set().union(*(_files(f"{p}/**/*.py") for p in PACKAGES)):
    with open(os.path.join(ROOT, path)) as f:
      if 'if __name__ == "__main__":' in f.read():
        entry_points.add(path)
  mains = {t["main"] for t in _targets()["py_binary"]}
  assert {"beam_pipelines/build.py", "tfkf/train.py", "serving/server.py"} <= entry_points
  assert entry_points == mains


def test_every_test_file_is_a_py_test():
  assert _files("tests/test_*.py") == _declared("py_test")
  names = [t["name"] for t in _targets()["py_test"]]
  assert sorted(names) == sorted(os.path.basename(p)[:-3] for p in _files("tests/test_*.py"))


# Each layer imports only the layers below it: the model library, then the Beam jobs and
# serving (side by side), then online learning, then the benchmarks.
LAYERS = {"tfkf": set(), "beam_pipelines": {"tfkf"}, "serving": {"tfkf"},
          "online": {"tfkf", "beam_pipelines", "serving"},
          "benchmarks": {"tfkf", "beam_pipelines", "serving", "online"}}


def _imported(path):
  """Top-level package names and full module names `path` imports (anywhere in it)."""
  import ast
  with open(os.path.join(ROOT, path)) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module
      yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_imports_run_only_down_the_layers():
  for package, allowed in LAYERS.items():
    for path in _files(f"{package}/**/*.py"):
      above = {m for m in _imported(path) if m.split(".")[0] in set(LAYERS) - allowed - {package}}
      assert not above, f"{path} imports {sorted(above)}: above its layer"


def test_no_library_module_imports_the_training_command_line():
  """Its constants and loaders live in tfkf.checkpoint; tfkf.train is run (benchmarks may
  run its function in-process, as the tests do)."""
  for path in set().union(*(_files(f"{p}/**/*.py") for p in ("tfkf", "beam_pipelines", "serving",
                                                              "online"))):
    assert "tfkf.train" not in set(_imported(path)), path
