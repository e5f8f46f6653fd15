# kaggle_lib install: exact pins from requirements-kaggle.txt, installed with --no-deps so pip
# cannot replace Kaggle's jax / jaxlib / libtpu (they match the TPU runtime). Skipped when every
# pin is already installed at its version (a re-run, or the local Kaggle-like test). Then every
# other kaggle_lib requirement (pyproject.toml, with its version range) is checked against
# what the image has.
import importlib
import importlib.metadata as _kl_md
import subprocess
import sys

from packaging.requirements import Requirement

_KL_PINS: dict[str, str] = {}  # filled in by kaggle_lib.kaggle.bundle
# kaggle_lib requirements the image must already meet
_KL_REQUIRED: list[str] = []  # filled in by kaggle_lib.kaggle.bundle
_KL_KEEP: tuple[str, ...] = ()  # filled in by kaggle_lib.kaggle.bundle
_KL_REPORT: tuple[str, ...] = ()  # filled in by kaggle_lib.kaggle.bundle


def _kl_version(name):
    try:
        return _kl_md.version(name)
    except _kl_md.PackageNotFoundError:
        return None


_kl_before = {n: _kl_version(n) for n in _KL_KEEP}
_kl_todo = [f"{n}=={v}" for n, v in _KL_PINS.items() if _kl_version(n) != v]
if _kl_todo:
    print("installing (--no-deps):", " ".join(_kl_todo), flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *_kl_todo],
                   check=True)
    importlib.invalidate_caches()
else:
    print("all pinned packages already installed")
_kl_wrong = {n: _kl_version(n) for n, v in _KL_PINS.items() if _kl_version(n) != v}
if _kl_wrong:
    raise RuntimeError(f"pinned packages not at their versions after install: {_kl_wrong}")
_kl_after = {n: _kl_version(n) for n in _KL_KEEP}
if _kl_after != _kl_before:
    raise RuntimeError(f"the install changed {_KL_KEEP}: {_kl_before} -> {_kl_after}")
print(f"python {sys.version.split()[0]} |", " ".join(f"{n} {_kl_version(n)}" for n in _KL_REPORT))
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
