#!/usr/bin/env python3
"""Check that what the pushed notebook installs on Kaggle resolves for Kaggle's Python 3.12.

    python scripts/check_kaggle_stack.py [--python /path/to/python3.12] [--time-install]

What the install cell installs: (1) the jax stack at kaggle_lib/compat/tested_versions.json's
versions with `jax[tpu]`, dependencies included; (2) requirements-kaggle.txt's pins, --no-deps.
First `pip install --isolated --dry-run --ignore-installed --python-version 3.12
--only-binary=:all: --platform manylinux_2_X_x86_64 --report` of each (plain PyPI; no
interpreter needed) names what has no cp312 manylinux wheel and so only builds from source.
Then, with a Python 3.12 interpreter (--python; python:3.12's Debian has glibc 2.36 like this
machine), the same dry runs without the platform flags resolve everything, sdists included:
the packages, the download size (Content-Length of every file the report names) and, with
--time-install, the wall time of a real install of both into a throwaway folder. Exit 1 when
the set does not resolve. Figures from a run are in docs/KAGGLE.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_lib.kaggle.bundle import PINS_FILE, REPO_ROOT, read_pins, tested_stack  # noqa: E402

PYTHON = "3.12"  # Kaggle/docker-python tpu/config.txt: BASE_IMAGE=python:3.12
# pip does not widen --platform to older glibc levels: list them all. python:3.12 (Debian
# bookworm) has glibc 2.36.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
# --isolated (no local mirror or constraints) also drops PIP_CERT.
_CERT = Path("/etc/ssl/certs/ca-certificates.crt")
ISOLATED = ["--isolated", *(["--cert", str(_CERT)] if _CERT.is_file() else [])]
_NOT_FOUND = re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)==")


def pip_report(requirements: list[str], *, no_deps: bool, python: str | None = None) -> dict:
    """`pip install --dry-run --report` of `requirements`: for Kaggle's Python and platform,
    wheels only, when `python` is None; else resolved natively by that interpreter. Raises with
    pip's error text when it does not resolve."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        target = (["--only-binary=:all:", "--python-version", PYTHON,
                   *(arg for p in PLATFORMS for arg in ("--platform", p))] if python is None
                  else [])
        cmd = [python or sys.executable, "-m", "pip", "install", *ISOLATED, "--dry-run",
               "--ignore-installed", "--report", str(report),
               *(["--no-deps"] if no_deps else []), *target, *requirements]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:  # pip's explanation of a conflict is on stdout
            raise RuntimeError(done.stdout[-4000:].strip())
        return json.loads(report.read_text())


def source_only(stack_reqs: list[str], pins: dict[str, str]) -> list[str]:
    """Packages of the install set with no cp312 manylinux wheel: pins are dropped and retried;
    a dependency of the stack is read from pip's "no matching distributions" list."""
    found: list[str] = []
    try:
        pip_report(stack_reqs, no_deps=False)
    except RuntimeError as exc:
        _, sep, tail = str(exc).partition("no matching distributions available for your "
                                          "environment:")
        missing = re.findall(r"^\s+([A-Za-z0-9._-]+)\s*$", tail, re.M) if sep else []
        if not missing:
            raise
        found += [f"{name} (a dependency of the jax stack)" for name in missing]
    todo = dict(pins)
    while todo:
        try:
            pip_report([f"{n}=={v}" for n, v in todo.items()], no_deps=True)
            break
        except RuntimeError as exc:
            match = _NOT_FOUND.search(str(exc))
            name = match and next((n for n in todo if n.lower() == match[1].lower()), None)
            if not name:
                raise
            found.append(f"{name}=={todo.pop(name)}")
    return found


def download_bytes(url: str) -> int:
    request = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.headers["Content-Length"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="a Python 3.12 interpreter: resolve everything with it")
    parser.add_argument("--time-install", action="store_true",
                        help="with --python: time a real install into a throwaway folder")
    args = parser.parse_args(argv)
    stack_reqs = [f"{'jax[tpu]' if n == 'jax' else n}=={v}" for n, v in tested_stack().items()]
    pin_reqs = [f"{n}=={v}" for n, v in read_pins(REPO_ROOT / PINS_FILE).items()]
    try:
        from_source = source_only(stack_reqs, read_pins(REPO_ROOT / PINS_FILE))
        print(f"only build from source (no cp{PYTHON.replace('.', '')} wheel for x86_64 "
              f"manylinux up to glibc 2.36): {', '.join(from_source) or 'none'}")
        if not args.python:
            print("pass --python <a Python 3.12> to resolve the whole set, sdists included")
            return 0
        reports = [pip_report(stack_reqs, no_deps=False, python=args.python),
                   pip_report(pin_reqs, no_deps=True, python=args.python)]
    except RuntimeError as exc:
        print(f"does not resolve for Python {PYTHON}:\n{exc}", file=sys.stderr)
        return 1
    version = subprocess.run([args.python, "-c", "import sys; print(sys.version.split()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    total = 0
    for title, report in zip(("jax stack, with dependencies", "requirements-kaggle.txt, "
                              "--no-deps"), reports, strict=True):
        print(f"{title} (Python {version}):")
        for item in report["install"]:
            meta, url = item["metadata"], item["download_info"]["url"]
            size = download_bytes(url)
            total += size
            kind = "wheel" if url.endswith(".whl") else "sdist: builds from source"
            print(f"  {meta['name']:28} {meta['version']:14} {size / 2**20:8.1f} MiB  {kind}")
    count = sum(len(r["install"]) for r in reports)
    print(f"download: {count} files, {total:,} bytes ({total / 2**20:.0f} MiB)")
    if args.time_install:
        with tempfile.TemporaryDirectory() as target:
            started = time.monotonic()
            for reqs, extra in ((stack_reqs, []), (pin_reqs, ["--no-deps"])):
                subprocess.run([args.python, "-m", "pip", "install", *ISOLATED, "--quiet",
                                "--no-cache-dir", "--target", target, *extra, *reqs], check=True)
            print(f"install (download included) with Python {version}: "
                  f"{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
