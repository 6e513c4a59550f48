"""The install metadata agrees with itself: requirements.txt (the pinned CI environment) lists every
package the library's pyproject.toml and the benchmarking project's (bench/pyproject.toml) declare,
with the same pins; the build backend pins torch as it says; the library ships no benchmarks."""
import ast
import importlib.util
import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import ROOT

try:
    import tomllib
except ImportError:  # Python 3.10: tomli, which `build` (requirements.txt) brings there
    import tomli as tomllib

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])
BENCH = tomllib.loads((ROOT / "bench" / "pyproject.toml").read_text())["project"]


def pinned_environment():
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return {canonicalize_name(req.name): req for req in map(Requirement, filter(None, lines))}


def declared():
    """Every requirement of the library, armour-bench and their extras (the library itself left out)."""
    reqs = []
    for project in (PROJECT, BENCH):
        for extra in [project["dependencies"], *project.get("optional-dependencies", {}).values()]:
            reqs += [Requirement(r) for r in extra if canonicalize_name(Requirement(r).name) != SELF]
    return list({str(r): r for r in reqs}.values())


@pytest.mark.parametrize("req", declared(), ids=str)
def test_requirements_txt_installs_what_pyproject_declares(req):
    pinned = pinned_environment().get(canonicalize_name(req.name))
    assert pinned is not None, f"{req.name} is declared in pyproject.toml but not installed by requirements.txt"
    pins = [s.version for s in pinned.specifier if s.operator == "=="]
    for version in pins:
        assert req.specifier.contains(version, prereleases=True), f"requirements.txt {pinned} breaks pyproject's {req}"
    for spec in req.specifier:
        if spec.operator == "==":
            assert pins == [spec.version], f"pyproject pins {req}, requirements.txt has {pinned}"


def load_backend():
    spec = importlib.util.spec_from_file_location("armour_build", ROOT / "build_backend" / "armour_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("installed, wanted", [
    ("2.11.0", "torch==2.11.0"), ("2.11.0+cu130", "torch==2.11.0"), ("2.13.0+cpu", "torch==2.13.0"),
    ("2.12.0.dev20260101+cpu", "torch==2.12.0.dev20260101"), ("2.4.1", "torch>=2.5"), (None, "torch>=2.5")])
def test_isolated_build_asks_for_the_installed_torch(installed, wanted):
    assert load_backend().torch_requirement(installed) == wanted


def test_backend_finds_the_torch_of_this_environment():
    from importlib.metadata import version
    assert load_backend().installed_torch_version() == version("torch")


def test_version_has_one_source():
    import armour_kernels
    assert "version" in PROJECT["dynamic"] and "version" not in PROJECT
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", armour_kernels.__version__)


def test_the_library_ships_no_benchmarks():
    """armour-bench and its package belong to bench/pyproject.toml, which depends on the library."""
    assert "armour-bench" not in PROJECT.get("scripts", {})
    assert "bench" not in PROJECT["optional-dependencies"]
    assert BENCH["scripts"] == {"armour-bench": "armour_bench.cli:main"}
    assert (ROOT / "bench" / "armour_bench" / "cli.py").is_file()
    assert SELF in {canonicalize_name(Requirement(r).name) for r in BENCH["dependencies"]}


def test_the_tests_never_import_the_benchmarks():
    """tests/ checks the library alone; the benchmarks' tests are bench/tests/ (a run of their own)."""
    importing = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "armour_bench" for name in names):
                importing.append(str(path.relative_to(ROOT)))
    assert not importing, f"tests importing armour_bench: {importing}"
