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


print(f"kaggle_lib from {_KL_ROOT} | commit {_KL_BUNDLE['git']['sha']}"
      f"{' (dirty)' if _KL_BUNDLE['git'].get('dirty') else ''} | config {_KL_BUNDLE['config']}")
