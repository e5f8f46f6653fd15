"""`kernel-metadata.json` and notebook-metadata checks, run before anything is pushed.

The `kaggle` client checks little (title length, source formats) and the server accepts a
lot it then ignores or misapplies: a `docker_image`, or accelerator metadata inside the .ipynb,
can put a TPU push on the CPU image (kaggle-cli issue 1197), and a retired machine shape is
silently swapped for another. Every rule here fails with the file, the field and what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from kaggle_lib.errors import KaggleLibError

METADATA_FILE = "kernel-metadata.json"

# Keys the kaggle client (2.2.x) reads from kernel-metadata.json for `kernels push`.
KNOWN_KEYS = (
    "id",
    "id_no",
    "title",
    "code_file",
    "language",
    "kernel_type",
    "is_private",
    "enable_gpu",
    "enable_tpu",
    "enable_internet",
    "dataset_sources",
    "competition_sources",
    "kernel_sources",
    "model_sources",
    "keywords",
    "docker_image",
    "docker_image_pinning_type",
    "machine_shape",
)
LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
BOOL_KEYS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
LIST_KEYS = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources",
             "keywords")

TPU_SHAPE = "TpuV5E8"
# Accelerators kaggle-cli's docs/kernels.md lists ("available as of Sep 2026"); some are only
# for specific competitions or admins. The server decides; we refuse only what is not listed.
CURRENT_SHAPES = ("TpuV5E8", "TpuV6E8", "NvidiaTeslaT4", "NvidiaTeslaT4Highmem",
                  "NvidiaTeslaA100", "NvidiaL4", "NvidiaL4X1", "NvidiaH100", "NvidiaRtxPro6000")
# Listed in the Feb 2026 docs (and kagglesdk's ApiSaveKernelRequest docstring) but dropped from
# the Sep 2026 list: accepted with a warning.
DROPPED_SHAPES = ("NvidiaTeslaP100",)
# TPU v3/v2 shapes: Kaggle retired those TPUs; what the server runs instead (kaggle-cli's
# retired-accelerator warning).
RETIRED_SHAPES = {
    "tpuv38": ("TpuV38", "TpuV5E8"),
    "tpu1vmv38": ("Tpu1VmV38", "TpuV5E8"),
    "tpuv232": ("TpuV232", "CPU (no accelerator)"),
    "tpuv2256": ("TpuV2256", "CPU (no accelerator)"),
}
DEFAULT_PINNING = "original"

SLUG_MIN = 5
TITLE_MIN = 5
# The Kaggle web UI cuts titles and slugs at 50 characters; longer ones only warn because the
# API limit is not documented.
SOFT_MAX = 50
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Keys in the notebook's own `metadata.kaggle` that select an image or accelerator; the server
# lets them override kernel-metadata.json.
NOTEBOOK_ACCELERATOR_KEYS = ("accelerator", "dockerImageVersionId", "isGpuEnabled", "isTpuEnabled")


class MetadataError(KaggleLibError, ValueError):
    """kernel-metadata.json or the notebook's metadata breaks a rule; the message says where."""


def slugify(title: str) -> str:
    """Kaggle's title -> slug rule for ASCII titles: lowercase, non-alphanumerics become '-'."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read kernel-metadata.json (a file, or a folder holding one) as a dict."""
    path = Path(path)
    if path.is_dir():
        path = path / METADATA_FILE
    if not path.is_file():
        raise MetadataError(f"{path}: file not found (a kernel folder needs a {METADATA_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def split_id(kernel_id: str) -> tuple[str, str]:
    """'owner/slug' -> (owner, slug); no checks beyond the single slash."""
    owner, _, slug = kernel_id.partition("/")
    return owner, slug


def _check_model_source(source: Any, where: str) -> str | None:
    if not isinstance(source, str):
        return f"{where}: must be a string, got {source!r}"
    parts = source.split("/")
    form = "owner/model/framework/variation/VERSION, e.g. google/gemma-3/flax/gemma3-1b-it/1"
    if len(parts) == 4 and all(parts):
        return (f"{where} = {source!r}: no version; model sources must be pinned as {form} "
                "(an unversioned source follows whatever version the owner publishes next)")
    if len(parts) != 5 or not all(_PART_RE.match(p) for p in parts):
        return f"{where} = {source!r}: must look like {form}"
    if not parts[4].isdigit():
        return f"{where} = {source!r}: the version (last part) must be an integer, like .../1"
    return None


def _check_owner_slug_source(source: Any, where: str, versioned_ok: bool) -> str | None:
    if not isinstance(source, str):
        return f"{where}: must be a string, got {source!r}"
    parts = source.split("/")
    ok = len(parts) == 2 or (versioned_ok and len(parts) == 3 and parts[2].isdigit())
    if not ok or not all(parts):
        form = "owner/slug or owner/slug/VERSION" if versioned_ok else "owner/slug"
        return f"{where} = {source!r}: must look like {form}"
    return None


def check_machine_shape(shape: str, where: str) -> str | None:
    """Error text for a retired or unknown machine shape, else None."""
    key = shape.strip().lower()
    if key in RETIRED_SHAPES:
        name, replacement = RETIRED_SHAPES[key]
        return (f"{where} = {shape!r}: {name} is retired; the server would run {replacement} "
                f"instead. Use {TPU_SHAPE!r} for a TPU v5e-8")
    if shape not in CURRENT_SHAPES + DROPPED_SHAPES:
        return (f"{where} = {shape!r}: not a machine shape kaggle-cli documents; allowed: "
                f"{', '.join(CURRENT_SHAPES + DROPPED_SHAPES)}")
    return None


def validate_metadata(
    meta: dict[str, Any],
    *,
    source: str = METADATA_FILE,
    folder: Path | None = None,
    require_tpu: bool = False,
) -> list[str]:
    """Check every rule; raise MetadataError listing all problems, else return warnings.

    `folder` is where `code_file` must exist (skipped when None). `require_tpu` insists on a
    TPU v5e-8 session (the submission kernel).
    """
    problems: list[str] = []
    warnings: list[str] = []

    unknown = sorted(set(meta) - set(KNOWN_KEYS))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(unknown)}; "
                        f"allowed keys: {', '.join(KNOWN_KEYS)}")

    kernel_id = meta.get("id")
    if not isinstance(kernel_id, str) or not kernel_id:
        problems.append("id: required, as 'owner/slug'")
        kernel_id = None
    else:
        parts = kernel_id.split("/")
        if len(parts) == 3:
            problems.append(f"id = {kernel_id!r}: must not contain a version; use 'owner/slug'")
        elif len(parts) != 2:
            problems.append(f"id = {kernel_id!r}: must be 'owner/slug'")
        else:
            owner, slug = parts
            if not _OWNER_RE.match(owner) or "INSERT" in owner.upper():
                problems.append(f"id = {kernel_id!r}: owner {owner!r} is not a Kaggle username")
            if len(slug) < SLUG_MIN:
                problems.append(f"id = {kernel_id!r}: slug {slug!r} is shorter than {SLUG_MIN} "
                                "characters (Kaggle's minimum)")
            elif not _SLUG_RE.match(slug):
                problems.append(f"id = {kernel_id!r}: slug {slug!r} may only hold lowercase "
                                "letters, digits and single dashes between them")
            elif len(slug) > SOFT_MAX:
                warnings.append(f"id: slug {slug!r} is longer than {SOFT_MAX} characters")

    title = meta.get("title")
    if not isinstance(title, str) or len(title.strip()) < TITLE_MIN:
        problems.append(f"title = {title!r}: required, at least {TITLE_MIN} characters")
    elif kernel_id and "/" in kernel_id:
        slug = split_id(kernel_id)[1]
        if slugify(title) != slug:
            # Kaggle derives the slug from the title: a mismatch can create or update a kernel
            # under another slug than the one we then poll.
            problems.append(f"title = {title!r} makes the slug {slugify(title)!r}, but id has "
                            f"{slug!r}; make them agree (the slug is the title lowercased, "
                            "with dashes for spaces and punctuation)")
        if len(title) > SOFT_MAX:
            warnings.append(f"title is longer than {SOFT_MAX} characters")

    code_file = meta.get("code_file")
    if not isinstance(code_file, str) or not code_file:
        problems.append("code_file: required, the notebook or script path relative to this folder")
    elif Path(code_file).is_absolute() or ".." in Path(code_file).parts:
        problems.append(f"code_file = {code_file!r}: must be a relative path inside the folder")
    elif folder is not None and not (folder / code_file).is_file():
        problems.append(f"code_file = {code_file!r}: file not found in {folder}")

    language = meta.get("language")
    if language not in LANGUAGES:
        problems.append(f"language = {language!r}: allowed: {', '.join(LANGUAGES)}")
    kernel_type = meta.get("kernel_type")
    if kernel_type not in KERNEL_TYPES:
        problems.append(f"kernel_type = {kernel_type!r}: allowed: {', '.join(KERNEL_TYPES)}")
    if kernel_type == "notebook" and isinstance(code_file, str) and language == "python" \
            and not code_file.endswith(".ipynb"):
        problems.append(f"code_file = {code_file!r}: a python notebook must be an .ipynb file")

    for key in BOOL_KEYS:
        if key in meta and not isinstance(meta[key], bool):
            problems.append(f"{key} = {meta[key]!r}: must be true or false (JSON booleans)")
    for key in LIST_KEYS:
        if key in meta and not isinstance(meta[key], list):
            problems.append(f"{key} = {meta[key]!r}: must be a list")

    if meta.get("docker_image") is not None:
        problems.append(f"docker_image = {meta['docker_image']!r}: remove it; a pinned image "
                        "overrides the accelerator's image (a TPU push then runs on the CPU "
                        "image, kaggle-cli issue 1197)")
    pinning = meta.get("docker_image_pinning_type")
    if pinning is not None and pinning not in PINNING_TYPES:
        problems.append(f"docker_image_pinning_type = {pinning!r}: "
                        f"allowed: {', '.join(PINNING_TYPES)}")
    elif pinning is None:
        # Without it the server applies its own default; 'original' keeps every new version on
        # the image of the kernel's first version (reproducible); docs/KAGGLE.md says how to move.
        warnings.append("docker_image_pinning_type is not set; set 'original' (reproducible) or "
                        "'latest'")

    shape = meta.get("machine_shape")
    enable_tpu = meta.get("enable_tpu") is True
    enable_gpu = meta.get("enable_gpu") is True
    if shape is not None:
        if not isinstance(shape, str):
            problems.append(f"machine_shape = {shape!r}: must be a string")
        else:
            err = check_machine_shape(shape, "machine_shape")
            if shape in DROPPED_SHAPES:
                warnings.append(f"machine_shape = {shape!r} is no longer in kaggle-cli's list of "
                                "accelerators (Sep 2026); the server may run another one")
            if err:
                problems.append(err)
            elif shape.startswith("Tpu") and not enable_tpu:
                problems.append(f"machine_shape = {shape!r} needs enable_tpu: true")
            elif shape.startswith("Nvidia") and not enable_gpu:
                problems.append(f"machine_shape = {shape!r} needs enable_gpu: true")
    if enable_tpu and enable_gpu:
        problems.append("enable_gpu and enable_tpu are both true; choose one")
    if require_tpu:
        if not enable_tpu:
            problems.append("enable_tpu: must be true (this kernel trains on a TPU v5e-8)")
        if shape != TPU_SHAPE:
            problems.append(f"machine_shape = {shape!r}: must be {TPU_SHAPE!r} (without it the "
                            "server picks its default TPU, which may be a retired one)")
    if "enable_internet" not in meta:
        # The client defaults it to true; say it explicitly so the file documents the session.
        warnings.append("enable_internet is not set (the client defaults it to true)")

    for i, src in enumerate(meta.get("model_sources") or []):
        err = _check_model_source(src, f"model_sources[{i}]")
        if err:
            problems.append(err)
    for key, versioned in (("dataset_sources", True), ("kernel_sources", True)):
        for i, src in enumerate(meta.get(key) or []):
            err = _check_owner_slug_source(src, f"{key}[{i}]", versioned)
            if err:
                problems.append(err)
    for key in ("competition_sources", "keywords"):
        for i, item in enumerate(meta.get(key) or []):
            if not isinstance(item, str) or not item:
                problems.append(f"{key}[{i}] = {item!r}: must be a non-empty string")

    if problems:
        raise MetadataError(f"{source}: invalid kernel metadata:\n" + "\n".join(
            f"  - {p}" for p in problems))
    return warnings


def check_notebook_metadata(notebook: dict[str, Any], source: str) -> None:
    """The .ipynb must not carry Kaggle image/accelerator settings (they override the push)."""
    kaggle_meta = (notebook.get("metadata") or {}).get("kaggle")
    if not isinstance(kaggle_meta, dict):
        return
    found = [k for k in NOTEBOOK_ACCELERATOR_KEYS if k in kaggle_meta]
    if found:
        raise MetadataError(
            f"{source}: notebook metadata.kaggle has {', '.join(found)}; remove the "
            "metadata.kaggle block (Kaggle's editor writes it on download). Accelerator and image "
            f"belong in {METADATA_FILE} (machine_shape, enable_tpu) only, or the TPU push may "
            "run on the CPU image (kaggle-cli issue 1197)")
