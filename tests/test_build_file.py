"""BUILD stays accurate: every module, entry point and test is declared."""

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfkf", "beam_pipelines", "serving", "benchmarks", "deploy")


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
