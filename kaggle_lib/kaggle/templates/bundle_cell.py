# kaggle_lib bundle: the package and configs/ of the commit below travel inside this notebook
# as a zip. It is checked against its sha256, unpacked outside /kaggle/working (so it is not
# saved as an output) and put first on sys.path.
import base64
import hashlib
import io
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path

_KL_BUNDLE: dict = {}  # filled in by kaggle_lib.kaggle.bundle
_KL_ZIP_B64 = ""  # filled in by kaggle_lib.kaggle.bundle


def _kl_unpack():
    data = base64.b64decode(_KL_ZIP_B64)
    digest = hashlib.sha256(data).hexdigest()
    if digest != _KL_BUNDLE["zip_sha256"]:
        raise RuntimeError(f"bundle corrupted: sha256 {digest} != {_KL_BUNDLE['zip_sha256']}")
    root = Path(tempfile.gettempdir()) / "kaggle_lib_bundle" / digest[:16]
    if not (root / ".complete").is_file():
        tmp = Path(tempfile.mkdtemp(prefix="kaggle_lib_bundle_"))
        zipfile.ZipFile(io.BytesIO(data)).extractall(tmp)
        root.parent.mkdir(parents=True, exist_ok=True)
        if not root.exists():
            tmp.rename(root)
        (root / ".complete").write_text(digest)
    return root


_KL_ROOT = _kl_unpack()
sys.path.insert(0, str(_KL_ROOT))
# A kaggle_lib imported earlier (another version) must not shadow the bundled one.
for _kl_name in [m for m in sys.modules if m == "kaggle_lib" or m.startswith("kaggle_lib.")]:
    del sys.modules[_kl_name]
import kaggle_lib  # noqa: E402

if not Path(kaggle_lib.__file__).resolve().is_relative_to(_KL_ROOT.resolve()):
    raise RuntimeError(f"kaggle_lib imports from {kaggle_lib.__file__}, "
                       f"not the bundle {_KL_ROOT}")
os.environ["KAGGLE_LIB_GIT_SHA"] = _KL_BUNDLE["git"]["sha"]
# The run manifest records the notebook URL from this (kaggle_lib.evidence.identity.kaggle_identity).
os.environ["KAGGLE_LIB_KERNEL_SLUG"] = _KL_BUNDLE["kernel_id"]
os.environ["KAGGLE_LIB_BUNDLE_ROOT"] = str(_KL_ROOT)
from kaggle_lib.runtime import detect_environment  # noqa: E402

_kl_info_path = detect_environment().working_dir / "evidence" / "kaggle_bundle.json"
_kl_info_path.parent.mkdir(parents=True, exist_ok=True)
_kl_info_path.write_text(json.dumps(_KL_BUNDLE, indent=2))
os.environ["KAGGLE_LIB_BUNDLE_INFO"] = str(_kl_info_path)


def _kl_resolve_config(path):
    """Repo-relative config paths resolve inside the bundled copy of the repository."""
    p = Path(path)
    if p.is_absolute() or p.is_file():
        return str(p)
    if (_KL_ROOT / p).is_file():
        return str(_KL_ROOT / p)
    shipped = sorted(q.name for q in (_KL_ROOT / "configs").glob("*.yaml"))
    raise FileNotFoundError(f"config {path!r} is neither a file here nor in the bundle; "
                            f"bundled configs: {shipped}")


def _kl_continue(overrides):
    """push --continue-from: train.resume_from -> the checkpoints in version N's outputs,
    wherever Kaggle mounted them under /kaggle/input (<slug>/ or deeper); the mounted
    evidence/kaggle_bundle.json must be version N's (not, say, the kernel's latest)."""
    cont = _KL_BUNDLE.get("continues_from")
    if not cont:
        return overrides
    input_dir = detect_environment().input_dir
    found = [p for depth in range(1, 4) for p in sorted((input_dir or Path("/nonexistent"))
             .glob("*/" * depth + cont["checkpoints"])) if p.is_dir()]
    label = f"{cont['kernel_id']} v{cont['version']}"
    if not found:
        raise FileNotFoundError(f"--continue-from {label}: {cont['checkpoints']} is not under "
                                f"{input_dir}; is {cont['kernel_id']} attached (kernel_sources)?")
    outputs = Path(str(found[0])[:-len(cont["checkpoints"])])
    mounted = outputs / "evidence" / "kaggle_bundle.json"
    digest = hashlib.sha256(mounted.read_bytes()).hexdigest() if mounted.is_file() else "none"
    if digest != cont["outputs_bundle_sha256"]:
        raise RuntimeError(f"--continue-from {label}: the outputs mounted at {outputs} are not "
                           f"version {cont['version']}'s (evidence/kaggle_bundle.json sha256 "
                           f"{digest}, version {cont['version']}'s {cont['outputs_bundle_sha256']})"
                           f"; continue from the version that is mounted, or see docs/KAGGLE.md")
    print(f"continuing {label}: run {cont['run_id']}, checkpoints {found[0]}, newest complete "
          f"step {cont['step']}")
    return dict(overrides, **{"train.resume_from": str(found[0])})


print(f"kaggle_lib from {_KL_ROOT} | commit {_KL_BUNDLE['git']['sha']}"
      f"{' (dirty)' if _KL_BUNDLE['git'].get('dirty') else ''} | config {_KL_BUNDLE['config']}")
