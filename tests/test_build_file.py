"""BUILD stays accurate: every module, entry point and test is declared."""

import glob
import os
import re
import shutil
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("tfkf", "beam_pipelines", "serving", "online", "benchmarks", "deploy")


def _targets():
  """Evaluates BUILD with stand-ins for the Bazel rules; returns {rule: [kwargs]}."""
  rules = {"py_library": [], "py_binary": [], "py_test": []}
  env = {name: (lambda kind: lambda **kw: rules[kind].append(kw))(name) for name in rules}
  env.update(load=lambda *a, **kw: None, requirement=lambda name: f"@pypi//{name}",
             dev_requirement=lambda name: f"@pypi_dev//{name}", glob=lambda p: [],
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


def _pinned(requirements_file):
  with open(os.path.join(ROOT, requirements_file)) as f:
    return {line.split("==")[0].lower() for line in f if "==" in line and not line.startswith("#")}


def test_every_bazel_requirement_is_pinned_in_its_hub():
  used = {dep for kind in ("py_library", "py_binary", "py_test") for target in _targets()[kind]
          for dep in target.get("deps", []) if dep.startswith("@")}
  hubs = {"@pypi": _pinned("requirements.txt"), "@pypi_dev": _pinned("requirements-dev.txt")}
  assert {dep for dep in used if dep.split("//")[1] not in hubs[dep.split("//")[0]]} == set()


def test_pip_install_gives_the_library_packages_with_the_runtime_pins(tmp_path):
  """`pip install .`: the wheel pip builds holds every module of the four library packages
  and requires exactly requirements.txt; installed apart from the checkout, they import."""
  library = ("tfkf", "beam_pipelines", "serving", "online")
  source = tmp_path / "source"  # setuptools builds in the source tree: a copy of the checkout
  source.mkdir()
  for name in ("pyproject.toml", "requirements.txt", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source)
  for name in library:
    shutil.copytree(os.path.join(ROOT, name), source / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "--wheel-dir", str(tmp_path / "wheel"), str(source)],
                 check=True, cwd=tmp_path)
  wheel, = glob.glob(str(tmp_path / "wheel" / "tfkf-*.whl"))
  with zipfile.ZipFile(wheel) as z:
    modules = {n for n in z.namelist() if n.endswith(".py")}
    metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
  assert modules == set().union(*(_files(f"{p}/**/*.py") for p in library))
  requires = {re.split("[=<>;]", line.split(":", 1)[1].strip())[0].lower()
              for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
  assert requires == _pinned("requirements.txt")
  subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                  str(tmp_path / "site"), wheel], check=True, cwd=tmp_path)
  imported = subprocess.run(
      [sys.executable, "-c", "import beam_pipelines.build, online.train, serving.server, tfkf.model;"
       "print(tfkf.model.__file__, beam_pipelines.build.__file__)"],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
      capture_output=True, text=True, check=True).stdout.split()
  assert all(path.startswith(str(tmp_path / "site")) for path in imported)
