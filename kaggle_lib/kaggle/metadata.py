"""`kernel-metadata.json` and notebook-metadata checks, run before anything is pushed: the
`kaggle` client checks little and the server misapplies a lot (a `docker_image`, or accelerator
metadata inside the .ipynb, can put a TPU push on the CPU image, kaggle-cli issue 1197; a retired
machine shape is silently swapped). Each rule fails naming the file, the field and what is allowed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, field_validator

from kaggle_lib.errors import KaggleLibError, format_validation_error

METADATA_FILE = "kernel-metadata.json"

LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
PINNING_TYPES = ("original", "latest")
BOOL_KEYS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")
LIST_KEYS = ("dataset_sources", "competition_sources", "kernel_sources", "model_sources",
             "keywords")

TPU_SHAPE = "TpuV5E8"
# Accelerators kaggle-cli's docs/kernels.md lists for users (Sep 2026, after PRs 1192 and 1198);
# some are only for specific competitions. The server decides; we refuse what is not listed.
CURRENT_SHAPES = ("TpuV5E8", "TpuV6E8", "NvidiaTeslaT4", "NvidiaTeslaA100", "NvidiaL4",
                  "NvidiaL4X1", "NvidiaH100", "NvidiaRtxPro6000")
# Retired: the server silently runs the replacement instead (kaggle-cli PR 1192, whose push
# warning names these replacements). Matched like kaggle-cli: case and spaces ignored.
RETIRED_SHAPES = {"nvidiateslap100": ("NvidiaTeslaP100", "NvidiaTeslaT4"),
                  "tpuv38": ("TpuV38", "TpuV5E8"), "tpu1vmv38": ("Tpu1VmV38", "TpuV5E8"),
                  "tpuv232": ("TpuV232", "CPU (no accelerator)"),
                  "tpuv2256": ("TpuV2256", "CPU (no accelerator)")}
# "An internal admin-only pool" (kaggle-cli PR 1198, which dropped it from the user docs).
# Refused, not warned: a user's push would at best get another machine chosen by the server
# (PR 1192: admin-gated shapes can be swapped silently); mapped to what to use instead.
ADMIN_ONLY_SHAPES = {"nvidiateslat4highmem": ("NvidiaTeslaT4Highmem", "NvidiaTeslaT4")}

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


class _Problem(ValueError):
    """A rule broken, with a message that stands as it is (it names the key itself)."""


def _model_source(source: str) -> str:
    parts = source.split("/")
    form = "owner/model/framework/variation/VERSION, e.g. google/gemma-3/flax/gemma3-1b-it/1"
    if len(parts) == 4 and all(parts):
        raise ValueError("no version; model sources must be pinned as "
                         f"{form} (an unversioned source follows whatever version the owner "
                         "publishes next)")
    if len(parts) != 5 or not all(_PART_RE.match(p) for p in parts):
        raise ValueError(f"must look like {form}")
    if not parts[4].isdigit():
        raise ValueError("the version (last part) must be an integer, like .../1")
    return source


def _owner_slug_source(source: str) -> str:
    parts = source.split("/")
    if not (len(parts) == 2 or (len(parts) == 3 and parts[2].isdigit())) or not all(parts):
        raise ValueError("must look like owner/slug or owner/slug/VERSION")
    return source


def _non_empty(item: str) -> str:
    if not item:
        raise ValueError("must be a non-empty string")
    return item


ModelSource = Annotated[str, AfterValidator(_model_source)]
OwnerSlugSource = Annotated[str, AfterValidator(_owner_slug_source)]
NonEmptyString = Annotated[str, AfterValidator(_non_empty)]


class KernelMetadata(BaseModel):
    """The keys of kernel-metadata.json the kaggle client (2.2.x) reads for `kernels push`;
    strict (JSON booleans must be booleans). Rules across keys are in `validate_metadata`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str
    id_no: int | None = None
    title: str
    code_file: str
    language: Literal["python", "r", "rmarkdown"]
    kernel_type: Literal["script", "notebook"]
    is_private: bool | None = None
    enable_gpu: bool | None = None
    enable_tpu: bool | None = None
    enable_internet: bool | None = None
    dataset_sources: list[OwnerSlugSource] = []
    competition_sources: list[NonEmptyString] = []
    kernel_sources: list[OwnerSlugSource] = []
    model_sources: list[ModelSource] = []
    keywords: list[NonEmptyString] = []
    # A pinned image overrides the accelerator's image: only its absence is allowed.
    docker_image: None = None
    docker_image_pinning_type: Literal["original", "latest"] | None = None
    machine_shape: str | None = None

    @field_validator("id")
    @classmethod
    def _owner_slash_slug(cls, kernel_id: str) -> str:
        if not kernel_id:
            raise _Problem("id: required, as 'owner/slug'")
        parts = kernel_id.split("/")
        if len(parts) == 3:
            raise ValueError("must not contain a version; use 'owner/slug'")
        if len(parts) != 2:
            raise ValueError("must be 'owner/slug'")
        owner, slug = parts
        if not _OWNER_RE.match(owner) or "INSERT" in owner.upper():
            raise ValueError(f"owner {owner!r} is not a Kaggle username")
        if len(slug) < SLUG_MIN:
            raise ValueError(f"slug {slug!r} is shorter than {SLUG_MIN} characters "
                             "(Kaggle's minimum)")
        if not _SLUG_RE.match(slug):
            raise ValueError(f"slug {slug!r} may only hold lowercase letters, digits and single "
                             "dashes between them")
        return kernel_id

    @field_validator("title")
    @classmethod
    def _title_length(cls, title: str) -> str:
        if len(title.strip()) < TITLE_MIN:
            raise ValueError(f"required, at least {TITLE_MIN} characters")
        return title

    @field_validator("code_file")
    @classmethod
    def _relative_code_file(cls, code_file: str) -> str:
        if not code_file:
            raise _Problem(_REQUIRED["code_file"])
        if Path(code_file).is_absolute() or ".." in Path(code_file).parts:
            raise ValueError("must be a relative path inside the folder")
        return code_file

    @field_validator("machine_shape")
    @classmethod
    def _documented_shape(cls, shape: str | None) -> str | None:
        key = shape.strip().lower() if shape is not None else None
        if key in RETIRED_SHAPES:
            name, replacement = RETIRED_SHAPES[key]
            advice = (f"use {replacement!r}" if replacement in CURRENT_SHAPES else
                      f"use {TPU_SHAPE!r} for a TPU v5e-8, or no accelerator for CPU")
            raise _Problem(f"machine_shape = {shape!r}: {name} is retired; the server would run "
                           f"{replacement} instead (kaggle-cli PR 1192); {advice}")
        if key in ADMIN_ONLY_SHAPES:
            name, replacement = ADMIN_ONLY_SHAPES[key]
            raise _Problem(f"machine_shape = {shape!r}: {name} is an internal admin-only pool "
                           "(kaggle-cli PR 1198), not for user accounts: the server would at "
                           f"best substitute another machine. Use {replacement!r} (GPU T4 x2)")
        if shape is not None and shape not in CURRENT_SHAPES:
            raise _Problem(f"machine_shape = {shape!r}: not a machine shape kaggle-cli documents; "
                           f"allowed: {', '.join(CURRENT_SHAPES)}")
        return shape


# What each key allows, for errors pydantic raises itself (wrong type, missing key).
_REQUIRED = {
    "id": "id: required, as 'owner/slug'",
    "code_file": "code_file: required, the notebook or script path relative to this folder",
}
_ALLOWED = {
    **{key: "must be true or false (JSON booleans)" for key in BOOL_KEYS},
    **{key: "must be a list" for key in LIST_KEYS},
    "id_no": "must be an integer",
    "title": f"required, at least {TITLE_MIN} characters",
    "language": f"allowed: {', '.join(LANGUAGES)}",
    "kernel_type": f"allowed: {', '.join(KERNEL_TYPES)}",
    "docker_image": "remove it; a pinned image overrides the accelerator's image (a TPU push "
                    "then runs on the CPU image, kaggle-cli issue 1197)",
    "docker_image_pinning_type": f"allowed: {', '.join(PINNING_TYPES)}",
    "machine_shape": "must be a string",
}


def _cross_key_problems(meta: KernelMetadata, folder: Path | None, require_tpu: bool) -> list[str]:
    problems: list[str] = []
    slug = split_id(meta.id)[1]
    if slugify(meta.title) != slug:
        # Kaggle derives the slug from the title: a mismatch can create or update a kernel
        # under another slug than the one we then poll.
        problems.append(f"title = {meta.title!r} makes the slug {slugify(meta.title)!r}, but id "
                        f"has {slug!r}; make them agree (the slug is the title lowercased, "
                        "with dashes for spaces and punctuation)")
    if folder is not None and not (folder / meta.code_file).is_file():
        problems.append(f"code_file = {meta.code_file!r}: file not found in {folder}")
    if meta.kernel_type == "notebook" and meta.language == "python" \
            and not meta.code_file.endswith(".ipynb"):
        problems.append(f"code_file = {meta.code_file!r}: a python notebook must be an .ipynb file")
    shape, enable_tpu, enable_gpu = meta.machine_shape, meta.enable_tpu, meta.enable_gpu
    if shape is not None and shape.startswith("Tpu") and not enable_tpu:
        problems.append(f"machine_shape = {shape!r} needs enable_tpu: true")
    elif shape is not None and shape.startswith("Nvidia") and not enable_gpu:
        problems.append(f"machine_shape = {shape!r} needs enable_gpu: true")
    if enable_tpu and enable_gpu:
        problems.append("enable_gpu and enable_tpu are both true; choose one")
    if require_tpu:
        if not enable_tpu:
            problems.append("enable_tpu: must be true (this kernel trains on a TPU v5e-8)")
        if shape != TPU_SHAPE:
            problems.append(f"machine_shape = {shape!r}: must be {TPU_SHAPE!r} (without it the "
                            "server picks its default TPU, which may be a retired one)")
    return problems


def _warnings(meta: KernelMetadata) -> list[str]:
    warnings: list[str] = []
    slug = split_id(meta.id)[1]
    if len(slug) > SOFT_MAX:
        warnings.append(f"id: slug {slug!r} is longer than {SOFT_MAX} characters")
    if len(meta.title) > SOFT_MAX:
        warnings.append(f"title is longer than {SOFT_MAX} characters")
    if meta.docker_image_pinning_type is None:
        # Without it the server applies its own default; 'original' keeps every new version on
        # the image of the kernel's first version (reproducible); docs/KAGGLE.md says how to move.
        warnings.append("docker_image_pinning_type is not set; set 'original' (reproducible) or "
                        "'latest'")
    if meta.enable_internet is None:
        # The client defaults it to true; say it explicitly so the file documents the session.
        warnings.append("enable_internet is not set (the client defaults it to true)")
    return warnings


def validate_metadata(meta: dict[str, Any], *, source: str = METADATA_FILE,
                      folder: Path | None = None, require_tpu: bool = False) -> list[str]:
    """Check every rule; raise MetadataError listing the problems, else return warnings. Rules
    across keys are checked once every key is valid; `folder` holds `code_file` (None: not
    checked); `require_tpu` insists on a TPU v5e-8 session (the submission kernel)."""
    header = f"{source}: invalid kernel metadata:"

    # Each error's line names what the key allows (unknown keys: format_validation_error's).
    def explain(error: dict[str, Any]) -> str | None:
        loc, kind = error["loc"], error["type"]
        key = str(loc[0])
        where = key if len(loc) == 1 else f"{key}[{loc[1]}]"
        if kind == "extra_forbidden":
            return None
        if kind == "value_error" and isinstance(error["ctx"]["error"], _Problem):
            return str(error["ctx"]["error"])
        if kind == "value_error":
            return f"{where} = {error['input']!r}: {error['ctx']['error']}"
        if len(loc) > 1:  # a list item of the wrong type
            return f"{where} = {error['input']!r}: must be a string"
        if key in _REQUIRED and (kind == "missing" or not isinstance(meta.get(key), str)):
            return _REQUIRED[key]
        return f"{key} = {meta.get(key)!r}: {_ALLOWED[key]}"

    try:
        parsed = KernelMetadata.model_validate(meta)
    except ValidationError as exc:
        raise MetadataError(format_validation_error(
            exc, header, model=KernelMetadata, explain=explain, bullet="  - ",
            group_unknown=True)) from None
    problems = _cross_key_problems(parsed, folder, require_tpu)
    if problems:
        raise MetadataError("\n".join([header, *(f"  - {p}" for p in problems)]))
    return _warnings(parsed)


def check_notebook_metadata(notebook: dict[str, Any], source: str) -> None:
    """The .ipynb must not carry Kaggle image/accelerator settings (they override the push)."""
    kaggle_meta = (notebook.get("metadata") or {}).get("kaggle")
    found = [k for k in NOTEBOOK_ACCELERATOR_KEYS if k in kaggle_meta] \
        if isinstance(kaggle_meta, dict) else []
    if found:
        raise MetadataError(
            f"{source}: notebook metadata.kaggle has {', '.join(found)}; remove the "
            "metadata.kaggle block (Kaggle's editor writes it on download). Accelerator and image "
            f"belong in {METADATA_FILE} (machine_shape, enable_tpu) only, or the TPU push may "
            "run on the CPU image (kaggle-cli issue 1197)")
