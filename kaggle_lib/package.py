"""`python -m kaggle_lib package`: a run record as one zip with a manifest and sha256 sums, its
verification, and the upload of an export to Kaggle Models through kagglehub.

    python -m kaggle_lib package --run-dir evidence/runs/<id> [--out run.zip]
        [--with-checkpoints] [--with-exports]
    python -m kaggle_lib package --verify run.zip
    python -m kaggle_lib package --run-dir evidence/runs/<id> --upload owner/model/framework/variation
        [--upload-dir export/orbax] [--license "Gemma"] [--notes "..."]

The zip holds `<run_id>/...` with `PACKAGE_MANIFEST.json` (identity, status, metrics, every
file with bytes and sha256) and `SHA256SUMS` (for `sha256sum -c`). Entries are sorted and dated
1980-01-01: the same record gives the same bytes. Weights (checkpoints/, export/) only when asked
for; never an earlier package saved inside the run directory. A secret found by the scan first is
redacted and refuses the package. A run still `running` is refused; a failed or interrupted one
is packaged with a warning, its status in PACKAGE_MANIFEST.json. `--out` may be a directory.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from kaggle_lib import auth, evidence, logs
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evidence import lock, scan
from kaggle_lib.hashing import sha256_hex

log = logs.get_logger(__name__)

PACKAGE_MANIFEST = "PACKAGE_MANIFEST.json"
SUMS = "SHA256SUMS"
PACKAGE_FORMAT = 1
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class PackageError(KaggleLibError, RuntimeError):
    """A run directory that cannot be packaged, or a package that does not verify."""


def _is_package(path: Path) -> bool:
    """Whether `path` is a zip this module wrote (an earlier package saved inside the run)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("/" + PACKAGE_MANIFEST) for name in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def package_files(run_dir: Path, *, with_checkpoints: bool = False,
                  with_exports: bool = False) -> list[Path]:
    """The files that go into the zip, relative to the run directory, sorted; never a package
    (an earlier `--out` inside the run directory)."""
    run_dir = Path(run_dir)
    skip = {name for name, wanted in (("checkpoints", with_checkpoints), ("export", with_exports))
            if not wanted}
    return [path.relative_to(run_dir) for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.relative_to(run_dir).parts[0] not in skip
            and not path.name.endswith(".tmp")
            and path.name not in (PACKAGE_MANIFEST, SUMS, evidence.LOCK)
            and not (path.suffix == ".zip" and _is_package(path))]


def build_package(run_dir: str | Path, out: str | Path | None = None, *,
                  with_checkpoints: bool = False, with_exports: bool = False) -> Path:
    """Write the zip (default `<run_id>.zip` next to the run directory; `out` an existing
    directory: `<out>/<run_id>.zip`); returns its path. A run still running is refused; one that
    did not succeed is packaged with a warning (its status is in PACKAGE_MANIFEST.json)."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / evidence.MANIFEST
    if not manifest_path.is_file():
        raise PackageError(f"{run_dir}: no {evidence.MANIFEST}; not a run directory "
                           "(expected evidence/runs/<run_id>/)")
    lock.close_if_writer_gone(run_dir)
    run_manifest = evidence.read_manifest(manifest_path)
    run_id = str(run_manifest.get("run_id") or run_dir.name)
    status = run_manifest.get("status")
    if status == "running":
        raise PackageError(f"run {run_id} is still running ({manifest_path} says status "
                           "'running'): its files are still changing; package it once it ends")
    if status != "succeeded":
        failure = run_manifest.get("failure") or {}
        where = (f" in stage {failure.get('stage')} ({failure.get('error_type')})"
                 if failure else "")
        log.warning(f"package: WARNING: run {run_id} did not succeed: status {status!r}{where}; "
                    f"packaging it anyway, with status {status!r} in {PACKAGE_MANIFEST}")
    files = package_files(run_dir, with_checkpoints=with_checkpoints, with_exports=with_exports)
    hits = scan.scan_for_secrets([run_dir / f for f in files])
    if hits:
        raise PackageError(f"secret values were found and redacted in {hits}; check them, then "
                           "package again")
    entries = []
    for rel in files:
        data = (run_dir / rel).read_bytes()
        entries.append({"path": rel.as_posix(), "bytes": len(data), "sha256": sha256_hex(data)})
    package_manifest = {  # no packaging time: the same record always gives the same bytes
        "package_format": PACKAGE_FORMAT, "run_id": run_id, "status": run_manifest.get("status"),
        "run_ended_at": run_manifest.get("ended_at"), "git": run_manifest.get("git"),
        "config_hash": run_manifest.get("config_hash"),
        "metrics": run_manifest.get("metrics") or {}, "includes_checkpoints": with_checkpoints,
        "includes_exports": with_exports, "files": entries,
    }
    sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries)
    out = Path(out) if out else run_dir.parent / f"{run_id}.zip"
    if out.is_dir():
        out = out / f"{run_id}.zip"
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                _add(zf, f"{run_id}/{rel.as_posix()}", (run_dir / rel).read_bytes())
            _add(zf, f"{run_id}/{PACKAGE_MANIFEST}",
                 (json.dumps(package_manifest, indent=2) + "\n").encode())
            _add(zf, f"{run_id}/{SUMS}", sums.encode())
        tmp.replace(out)
    except OSError as exc:
        raise PackageError(f"cannot write the package {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)  # written and renamed, or cut short: never left behind
    return out


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def verify_package(path: str | Path) -> list[str]:
    """Problems found in a package (empty list: every checksum verifies, nothing is missing or
    extra, and the run manifest inside matches its schema)."""
    problems: list[str] = []
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"{path}: not a readable zip ({exc})"]
    with zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        roots = {n.split("/", 1)[0] for n in names}
        if len(roots) != 1:
            return [f"expected one top-level run directory, found {sorted(roots)}"]
        root = roots.pop()
        try:
            manifest = json.loads(zf.read(f"{root}/{PACKAGE_MANIFEST}"))
            sums_text = zf.read(f"{root}/{SUMS}").decode()
        except KeyError as exc:
            return [f"missing {exc.args[0]}"]
        sums = {name: digest for digest, _, name in
                (line.partition("  ") for line in sums_text.splitlines())}
        listed = {e["path"]: e for e in manifest.get("files", [])}
        if set(listed) != set(sums):
            problems.append(f"{PACKAGE_MANIFEST} and {SUMS} list different files: "
                            f"{sorted(set(listed) ^ set(sums))}")
        present = {n[len(root) + 1:] for n in names} - {PACKAGE_MANIFEST, SUMS}
        for name in sorted(present - set(sums)):
            problems.append(f"{name}: in the zip but not in {SUMS}")
        for name, digest in sorted(sums.items()):
            if name not in present:
                problems.append(f"{name}: listed in {SUMS} but missing from the zip")
                continue
            data = zf.read(f"{root}/{name}")
            if sha256_hex(data) != digest:
                problems.append(f"{name}: sha256 mismatch")
            elif name in listed and listed[name].get("bytes") != len(data):
                problems.append(f"{name}: size mismatch")
        if evidence.MANIFEST in present:
            errors = evidence.manifest_errors(json.loads(zf.read(f"{root}/{evidence.MANIFEST}")))
            problems += [f"{evidence.MANIFEST}: {e}" for e in errors]
    return problems


def upload_model(local_dir: str | Path, handle: str, *, license_name: str | None = "Gemma",
                 version_notes: str = "") -> dict[str, Any] | None:
    """Upload `local_dir` as a new version of the Kaggle Model `handle`
    (owner/model/framework/variation, no version). Without credentials: prints why and returns
    None instead of failing."""
    local_dir = Path(local_dir)
    parts = handle.strip("/").split("/")
    if len(parts) != 4 or not all(parts):
        raise PackageError(f"--upload handle {handle!r} must be owner/model/framework/variation "
                           "(no version number: Kaggle assigns the next one)")
    if not local_dir.is_dir() or not any(local_dir.iterdir()):
        raise PackageError(f"{local_dir}: nothing to upload (export the model first: "
                           "the pipeline's export stage, written to <run_dir>/export/)")
    if auth.kaggle_credentials_source() is None:
        log.info("[kaggle_lib] no Kaggle credentials (KAGGLE_API_TOKEN, ~/.kaggle/access_token, "
              "KAGGLE_USERNAME + KAGGLE_KEY or ~/.kaggle/kaggle.json): skipping the upload of "
              f"{local_dir} to {handle}")
        return None
    import kagglehub

    kagglehub.model_upload(handle, str(local_dir), license_name=license_name,
                           version_notes=version_notes)
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    return {"handle": handle, "uploaded_at": evidence.utc_now(), "local_dir": str(local_dir),
            "files": files, "license": license_name,
            "url": f"https://www.kaggle.com/models/{parts[0]}/{parts[1]}"}
