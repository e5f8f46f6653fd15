# kaggle_lib install, before anything imports jax. Stack "lock" (the default): the jax stack the
# tests ran (kaggle_lib/compat/tested_versions.json, from requirements.lock), installed with its
# dependencies so that `jax[<accelerator>]==<lock's jax>` brings the libtpu that jax release
# requires (Kaggle's TPU image has libtpu 0.0.17, forced for its torch); then checked, and a
# difference stops the notebook naming the package and both versions. Stack "image": the image's
# jax stack stays and kaggle_lib.compat warns about what differs from the tested versions.
# Then the exact pins of requirements-kaggle.txt with --no-deps (they may not move the stack),
# and every other kaggle_lib requirement (pyproject.toml, with its range) is checked against what
# the image has. Each pip call is skipped when everything is already at its version.
import importlib
import importlib.metadata as _kl_md
import subprocess
import sys
import time

from packaging.requirements import Requirement

_KL_STACK_MODE = "lock"  # filled in by kaggle_lib.kaggle.bundle
_KL_STACK: dict[str, str] = {}  # filled in by kaggle_lib.kaggle.bundle
_KL_JAX_EXTRA = ""  # filled in by kaggle_lib.kaggle.bundle
_KL_PINS: dict[str, str] = {}  # filled in by kaggle_lib.kaggle.bundle
# kaggle_lib requirements the image must already meet
_KL_REQUIRED: list[str] = []  # filled in by kaggle_lib.kaggle.bundle


def _kl_version(name):
    try:
        return _kl_md.version(name)
    except _kl_md.PackageNotFoundError:
        return None


def _kl_extra_requirements(jax_requires, extra):
    """What jax declares for its accelerator extra (jax[tpu]: libtpu==0.0.42.*, jaxlib)."""
    reqs = [Requirement(line) for line in jax_requires] if extra else []
    return [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})]


def _kl_stack_problems(installed, tested, jax_requires, extra):
    """One line per package of the stack not at its tested version, naming both versions, and
    per requirement of jax[extra] the installed versions do not meet. `installed`: {name:
    version or None}; `jax_requires`: the installed jax's Requires-Dist lines."""
    problems = [f"{name}: installed {installed.get(name) or 'none'}, requirements.lock has "
                f"{version}" for name, version in tested.items() if installed.get(name) != version]
    for req in _kl_extra_requirements(jax_requires, extra):
        have = installed.get(req.name)
        if have is None or not req.specifier.contains(have, prereleases=True):
            problems.append(f"{req.name}: installed {have or 'none'}, jax[{extra}]=="
                            f"{tested.get('jax')} requires {req.name}{req.specifier}")
    return problems


def _kl_stack_now():
    jax_requires = (_kl_md.requires("jax") or []) if _kl_version("jax") else []
    names = {*_KL_STACK, *(r.name for r in _kl_extra_requirements(jax_requires, _KL_JAX_EXTRA))}
    return {n: _kl_version(n) for n in names}, jax_requires


def _kl_pip(args):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *args])
    importlib.invalidate_caches()
    print(f"pip install took {time.monotonic() - started:.0f} s (exit {done.returncode})",
          flush=True)
    return done.returncode


_kl_installed, _kl_jax_requires = _kl_stack_now()
_kl_pip_failed = 0
if _KL_STACK_MODE == "lock" and _kl_stack_problems(_kl_installed, _KL_STACK, _kl_jax_requires,
                                                   _KL_JAX_EXTRA):
    _kl_jax = f"jax[{_KL_JAX_EXTRA}]" if _KL_JAX_EXTRA else "jax"
    _kl_todo = [f"{_kl_jax if n == 'jax' else n}=={v}" for n, v in _KL_STACK.items()]
    print("installing the tested jax stack:", " ".join(_kl_todo), flush=True)
    _kl_pip_failed = _kl_pip(_kl_todo)
    _kl_installed, _kl_jax_requires = _kl_stack_now()
print(f"python {sys.version.split()[0]} | jax stack ({_KL_STACK_MODE}): installed vs "
      "requirements.lock")
for _kl_name in sorted(_kl_installed):
    print(f"  {_kl_name:18} {_kl_installed[_kl_name] or 'none':14} "
          f"{_KL_STACK.get(_kl_name, '(required by jax[' + _KL_JAX_EXTRA + '])')}")
_kl_problems = _kl_stack_problems(_kl_installed, _KL_STACK, _kl_jax_requires, _KL_JAX_EXTRA)
if _kl_problems and _KL_STACK_MODE == "lock":
    raise RuntimeError("the jax stack is not the one the tests ran (kaggle_lib/compat/"
                       "tested_versions.json, from requirements.lock)"
                       + (f"; pip exited {_kl_pip_failed}" if _kl_pip_failed else "") + ":\n  "
                       + "\n  ".join(_kl_problems)
                       + "\npush with --stack image to run on the image's stack instead")
if _kl_problems:
    print("stack: image - kaggle_lib.compat warns about the untested versions above")

_kl_before = dict(_kl_installed)
_kl_todo = [f"{n}=={v}" for n, v in _KL_PINS.items() if _kl_version(n) != v]
if _kl_todo:
    print("installing (--no-deps):", " ".join(_kl_todo), flush=True)
    _kl_pip_failed = _kl_pip(["--no-deps", *_kl_todo])
else:
    print("all pinned packages already installed")
_kl_wrong = {n: _kl_version(n) for n, v in _KL_PINS.items() if _kl_version(n) != v}
if _kl_wrong:
    raise RuntimeError(f"pinned packages not at their versions after install: {_kl_wrong}")
if _kl_stack_now()[0] != _kl_before:
    raise RuntimeError(f"the --no-deps install changed the jax stack: {_kl_before} -> "
                       f"{_kl_stack_now()[0]}")
_kl_unmet = []
for _kl_req in map(Requirement, _KL_REQUIRED):
    if _kl_req.marker is not None and not _kl_req.marker.evaluate():
        continue
    _kl_have = _kl_version(_kl_req.name)
    if _kl_have is None or not _kl_req.specifier.contains(_kl_have, prereleases=True):
        _kl_unmet.append(f"{_kl_req.name}: kaggle_lib needs {_kl_req}, this image has "
                         f"{_kl_have or 'none'}")
if _kl_unmet:
    raise RuntimeError("this image does not meet kaggle_lib's requirements (pyproject.toml):\n  "
                       + "\n  ".join(_kl_unmet) + "\nadd exact pins to requirements-kaggle.txt "
                       "(and requirements.lock) and push again")
print("pinned:", {n: _kl_version(n) for n in _KL_PINS})
