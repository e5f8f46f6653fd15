"""Build the self-contained notebook that is pushed to Kaggle.

`kaggle_lib` and `configs/` of this commit travel inlined in the notebook as a base64 zip
checked by sha256: what runs is what was pushed (a wheel in a dataset would be a second
artefact to keep in step), for a few hundred kB of notebook.

Cells, in order: info; install (the tested jax stack, `jax[tpu]` at the lock's version, unless
`stack="image"`; then the exact pins of `requirements-kaggle.txt` with `--no-deps`); bundle
(extract, import); `parameters`, then papermill's `injected-parameters`; resolve (config paths
inside the bundle, `--continue-from` checkpoints under /kaggle/input); the notebook's own cells.
Install, bundle and resolve are the .py files in `templates/`, filled in by `fill_template`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import pprint
import re
import sys
import time
import tomllib
import uuid
import zipfile
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name as normalize  # PEP 503 project names

from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evidence.identity import git_info
from kaggle_lib.hashing import sha256_hex
from kaggle_lib.kaggle.metadata import (
    METADATA_FILE,
    TPU_SHAPE,
    MetadataError,
    check_notebook_metadata,
    load_metadata,
    split_id,
    validate_metadata,
)
from kaggle_lib.models.registry import get_spec

REPO_ROOT = Path(__file__).resolve().parents[2]
PINS_FILE = "requirements-kaggle.txt"
BUILD_INFO = "kaggle_lib/_build_info.json"  # only inside the bundle, never in the repository
LOCK_FILE = "requirements.lock"
TESTED_VERSIONS = "kaggle_lib/compat/tested_versions.json"
DEFAULT_CONFIG = "configs/tpu_gemma3_1b.yaml"
# The jax stack the install cell puts at the tested versions (kaggle_lib/compat/
# tested_versions.json); libtpu comes with `jax[tpu]==<jax>`. chex is not among them: nothing in
# requirements.lock needs it, so the tests never ran one.
STACK_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "qwix", "google-tunix")
STACKS = ("lock", "image")
# pip extra of jax per config device: what brings that accelerator's plugin (jax's setup.py).
JAX_EXTRAS = {"tpu": "tpu", "gpu": "cuda12"}
PARAMETER_NAMES = ("config_path", "overrides", "run_name", "run_dir")
# Inlined zip above this size gets a warning: the notebook editor gets slow.
SIZE_WARN_BYTES = 2 * 1024 * 1024
# Users report HTTP 400 "The kernel source must be less than 1 megabytes in size" for the
# notebook text the client sends; refuse well before it.
MAX_SENT_BYTES = 950_000
_B64_LINE = 4096
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files give the same sha256
_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
_BLOCKING_CALL_RE = re.compile(r"(?<![\w.])(input|getpass\.getpass|getpass)\s*\(")


class BundleError(KaggleLibError, ValueError):
    """The bundle cannot be built; the message names the file, the field and what is allowed."""


_CONTINUE_RE = re.compile(r"^([A-Za-z0-9][\w-]*)/([A-Za-z0-9][\w.-]*)/v([0-9]+)$")
KAGGLE_INPUT = "/kaggle/input"


@dataclasses.dataclass(frozen=True)
class Continuation:
    """`push --continue-from OWNER/SLUG/vN`: the SFT checkpoints in version N's fetched outputs
    that the new run resumes from. Whether Kaggle mounts version N of a kernel source (and of the
    kernel itself) only a real push shows, so `outputs_bundle_sha256` (version N's
    evidence/kaggle_bundle.json) lets the notebook check that what is mounted is version N's."""

    kernel_id: str
    version: int
    run_id: str
    checkpoints: str  # relative to the outputs: evidence/runs/<run_id>/checkpoints/sft
    step: int  # its newest complete step (the run sets aside any that do not restore)
    outputs_bundle_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def find_continuation(spec: str, evidence_dir: Path) -> Continuation:
    """Version N's outputs as `push --version N --wait` fetched them into `evidence_dir`."""
    match = _CONTINUE_RE.match(spec)
    if not match:
        raise BundleError(f"--continue-from {spec!r}: expected OWNER/SLUG/vN, e.g. "
                          "me/gemma-tunix-reasoning/v7")
    owner, slug, version = match[1], match[2], int(match[3])
    outputs = evidence_dir / slug / f"v{version}"
    bundle_info = outputs / "evidence" / "kaggle_bundle.json"
    if not bundle_info.is_file():
        raise BundleError(f"--continue-from {spec}: {bundle_info} not found; fetch version "
                          f"{version}'s outputs first: python -m kaggle_lib push --version "
                          f"{version} --wait --evidence-dir {evidence_dir}")
    from kaggle_lib.training.checkpoints import complete_steps

    found = [(max(steps), root) for root in sorted(outputs.glob("**/checkpoints/sft"))
             if (steps := complete_steps(root))]
    if not found:
        raise BundleError(f"--continue-from {spec}: no complete SFT checkpoint step under "
                          f"{outputs} (**/checkpoints/sft/<step> with model_params and "
                          "optimizer_state); that version saved none to continue from")
    step, root = max(found)
    rel = root.relative_to(outputs)
    return Continuation(kernel_id=f"{owner}/{slug}", version=version, run_id=rel.parts[-3],
                        checkpoints=rel.as_posix(), step=step,
                        outputs_bundle_sha256=sha256_hex(bundle_info.read_bytes()))


@dataclasses.dataclass
class BundleOptions:
    """What to build. Paths in `config` are relative to `repo_root`."""

    path: Path  # folder holding kernel-metadata.json
    out_dir: Path | None = None  # default: <repo>/build/kaggle/<slug>
    config: str = DEFAULT_CONFIG
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_name: str = ""
    owner: str | None = None  # replaces the owner part of the metadata id
    skip_install: bool = False
    stack: str = "lock"  # "image": keep the image's jax stack (STACKS)
    continue_from: Continuation | None = None  # push --continue-from
    repo_root: Path = REPO_ROOT


@dataclasses.dataclass
class Bundle:
    """A built bundle folder, ready for `kaggle kernels push -p <dir>`."""

    dir: Path
    metadata: dict[str, Any]
    notebook: Path
    info: dict[str, Any]
    warnings: list[str]

    @property
    def kernel_id(self) -> str:
        return str(self.metadata["id"])


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines (comments allowed) -> {name: version}; anything else is an error."""
    if not path.is_file():
        raise BundleError(f"{path}: file not found (exact pins installed on Kaggle)")
    pins: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIN_RE.match(line)
        if not match:
            raise BundleError(f"{path}:{lineno}: {line!r} is not an exact pin; allowed: "
                              "'name==version' (installed with --no-deps, so it must be exact)")
        name, version = match.groups()
        if normalize(name) in STACK_PACKAGES or normalize(name).startswith("libtpu"):
            raise BundleError(f"{path}:{lineno}: {name} must not be pinned here: the install cell "
                              f"installs the jax stack ({', '.join(STACK_PACKAGES)}, libtpu via "
                              "jax[tpu]) at kaggle_lib/compat/tested_versions.json's versions")
        pins[name] = version
    return pins


def tested_stack(repo_root: Path = REPO_ROOT) -> dict[str, str]:
    """{package: tested version} of STACK_PACKAGES from the bundled kaggle_lib/compat/
    tested_versions.json: the table the compat version guard checks against."""
    path = repo_root / TESTED_VERSIONS
    table = json.loads(path.read_text())
    missing = [name for name in STACK_PACKAGES if name not in table]
    if missing:
        raise BundleError(f"{path}: no tested version of {', '.join(missing)}; regenerate it "
                          "with `make tested-versions`")
    return {name: table[name]["version"] for name in STACK_PACKAGES}


def read_lock(path: Path) -> dict[str, str]:
    """requirements.lock (pip freeze) -> {normalized name: version}."""
    out: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            match = _PIN_RE.match(line.split("#", 1)[0].strip().split(";")[0].strip())
            if match:
                out[normalize(match.group(1).split("[")[0])] = match.group(2)
    return out


def check_pins_against_lock(pins: dict[str, str], lock: dict[str, str], pins_file: Path) -> None:
    """Kaggle must run the versions the tests ran: every pin equals requirements.lock."""
    wrong = [f"{n}=={v} (lock has {lock.get(normalize(n))})" for n, v in pins.items()
             if lock and lock.get(normalize(n)) != v]
    if wrong:
        raise BundleError(f"{pins_file}: pins differ from {LOCK_FILE}: {', '.join(wrong)}; "
                          "make them equal so Kaggle runs what the tests ran")


def required_preinstalled(repo_root: Path, pins: dict[str, str]) -> list[str]:
    """Unpinned requirements of pyproject.toml: Kaggle's image must already satisfy them."""
    from packaging.requirements import InvalidRequirement, Requirement

    pyproject = repo_root / "pyproject.toml"
    deps: list[str] = []
    if pyproject.is_file():
        data = tomllib.loads(pyproject.read_text())
        deps = data.get("project", {}).get("dependencies", [])
    # The stack is installed (or, with stack "image", checked by kaggle_lib.compat instead).
    pinned = {normalize(n) for n in pins} | set(STACK_PACKAGES)
    out: list[str] = []
    for i, dep in enumerate(deps):
        try:
            req = Requirement(dep)
        except InvalidRequirement as exc:
            raise BundleError(f"{pyproject}: project.dependencies[{i}] = {dep!r} is not a valid "
                              f"requirement ({exc}); allowed: PEP 508, e.g. 'flax>=0.11.1'") from None
        if normalize(req.name) not in pinned and str(req) not in out:
            out.append(str(req))
    return out


def _bundled_files(repo_root: Path) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for top, pattern in (("kaggle_lib", "**/*"), ("configs", "*.yaml")):
        base = repo_root / top
        if not base.is_dir():
            if top == "kaggle_lib":
                raise BundleError(f"{base}: package folder not found (repo_root={repo_root})")
            continue
        for path in base.glob(pattern):
            rel = path.relative_to(repo_root)
            if (path.is_file() and "__pycache__" not in rel.parts and path.suffix != ".pyc"
                    and rel.as_posix() != BUILD_INFO):
                files.append((rel.as_posix(), path))
    return sorted(files)


def make_archive(repo_root: Path, extra: dict[str, bytes] | None = None) -> bytes:
    """Deterministic zip of kaggle_lib/, configs/*.yaml and `extra` {name: content}. bzip2
    (stdlib on both ends): the shipped JSONL data compresses to ~half of deflate, which keeps
    the notebook text well under Kaggle's 1 MB source limit."""
    files = {name: path.read_bytes() for name, path in _bundled_files(repo_root)}
    files.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2, compresslevel=9) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_BZIP2
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buf.getvalue()


def sent_notebook_bytes(notebook: Path) -> int:
    """Size of the notebook text the kaggle client sends (`ApiSaveKernelRequest.text`), as
    kaggle 2.2.4 `KaggleApi.kernels_push` makes it: code-cell outputs emptied, list sources
    joined, then `json.dumps` (compact separators off, ASCII escapes on)."""
    body = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in body.get("cells", []):
        if "outputs" in cell and cell.get("cell_type") == "code":
            cell["outputs"] = []
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
    return len(json.dumps(body).encode("utf-8"))


def _check_config(repo_root: Path, config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate the chosen config with kaggle_lib.config; return facts the push checks use."""
    rel = Path(config)
    if rel.is_absolute() or ".." in rel.parts or rel.parts[:1] != ("configs",):
        raise BundleError(f"--config {config!r}: must be a path under configs/ (it is shipped "
                          "inside the bundle and resolved there)")
    path = repo_root / rel
    if not path.is_file():
        available = sorted(p.name for p in (repo_root / "configs").glob("*.yaml"))
        raise BundleError(f"--config {config!r}: file not found; available: "
                          f"{', '.join(available) or 'none'}")
    from kaggle_lib import config as cfg
    from kaggle_lib.data_spec import spec_list

    try:
        tree = cfg.apply_overrides(cfg.read_yaml(path), overrides)
        source = str(rel) + (" (with overrides)" if overrides else "")
        run_config = cfg.validate_config(tree, source)
    except cfg.ConfigError as exc:
        raise BundleError(str(exc)) from None
    for key in ("train", "eval"):
        for spec in spec_list(getattr(run_config.data, key)):
            if spec.startswith("jsonl:") and not Path(spec.removeprefix("jsonl:")).is_absolute():
                raise BundleError(f"{rel}: data.{key} names {spec!r}, a repo-relative file the "
                                  "bundle does not carry; use builtin: data or an absolute "
                                  "/kaggle/input path")
    return {"device": run_config.device, "model": run_config.model.name,
            "model_source": run_config.model.source, "hash": run_config.hash}


def _check_device(meta: dict[str, Any], device: str, source: str) -> list[str]:
    """The session's accelerator must be the one the config trains on."""
    shape = meta.get("machine_shape")
    if device == "tpu" and (shape != TPU_SHAPE or meta.get("enable_tpu") is not True):
        raise BundleError(f"{source}: the config trains on device tpu, so machine_shape must be "
                          f"{TPU_SHAPE!r} with enable_tpu: true (got machine_shape={shape!r}, "
                          f"enable_tpu={meta.get('enable_tpu')!r})")
    if device == "gpu" and meta.get("enable_gpu") is not True:
        raise BundleError(f"{source}: the config trains on device gpu, so enable_gpu must be true")
    if device == "cpu" and (meta.get("enable_tpu") or meta.get("enable_gpu")):
        return [f"the config runs on cpu but {source} asks for an accelerator ({shape}); "
                "the accelerator session would sit idle"]
    return []


def _model_source_warning(meta: dict[str, Any], facts: dict[str, Any]) -> list[str]:
    if facts.get("model_source") not in ("kaggle", "auto"):
        return []
    try:
        handle = get_spec(facts["model"]).kaggle_handle
    except KeyError:  # an unknown model: the run's config stage names it
        return []
    attached = meta.get("model_sources") or []
    if facts["model_source"] == "kaggle" and handle and handle not in attached:
        return [f"model {facts['model']} loads from Kaggle ({handle}) but model_sources does not "
                "attach it; it will be downloaded at run time instead"]
    return []


def _find_parameters_cell(cells: list[Any], source: str) -> int:
    tagged = [i for i, c in enumerate(cells)
              if "parameters" in (c.get("metadata", {}).get("tags") or [])]
    if len(tagged) != 1:
        raise BundleError(f"{source}: needs exactly one code cell tagged 'parameters', found "
                          f"{len(tagged)}")
    if cells[tagged[0]].get("cell_type") != "code":
        raise BundleError(f"{source}: the cell tagged 'parameters' must be a code cell")
    return tagged[0]


def _check_blocking_calls(cells: list[Any], source: str) -> None:
    """A batch session has no stdin: input()/getpass() would hang until the 9-hour limit."""
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        for line in str(cell.get("source", "")).splitlines():
            if line.lstrip().startswith("#"):
                continue
            if _BLOCKING_CALL_RE.search(line):
                raise BundleError(f"{source}: cell {i} calls {line.strip()!r}; a Kaggle batch run "
                                  "has no stdin and would hang. Read values from config or secrets")


TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Lines of a template that the bundle fills in: `NAME[: type] = default  # filled in by ...`.
_FILLED_LINE = re.compile(r"^(?P<name>_KL_\w+)(?:: [^=]+)? = .*  # filled in by kaggle_lib\.kaggle\.bundle$",
                          re.M)


def fill_template(name: str, values: dict[str, str]) -> str:
    """Text of `templates/<name>`, each marked line set to `NAME = values[NAME]` (all, exactly)."""
    text = (TEMPLATES_DIR / name).read_text(encoding="utf-8")
    marked = _FILLED_LINE.findall(text)
    if sorted(marked) != sorted(values):
        raise BundleError(f"{TEMPLATES_DIR / name}: lines to fill are {sorted(marked)}, values "
                          f"were given for {sorted(values)}; they must be the same names")
    return _FILLED_LINE.sub(lambda m: f"{m['name']} = {values[m['name']]}", text).rstrip("\n")


def build_bundle(opts: BundleOptions) -> Bundle:
    """Validate metadata, notebook, config and pins; write the bundle folder; return it."""
    import nbformat
    from papermill import inspect_notebook
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    folder = opts.path.resolve()
    repo = opts.repo_root.resolve()
    meta_path = folder / METADATA_FILE
    meta = load_metadata(meta_path)
    if opts.owner:
        meta["id"] = f"{opts.owner}/{split_id(str(meta.get('id', '')))[1]}"
    warnings = validate_metadata(meta, source=str(meta_path), folder=folder)
    if meta.get("kernel_type") != "notebook" or meta.get("language") != "python":
        raise MetadataError(f"{meta_path}: kernel_type must be 'notebook' and language 'python' "
                            "for the kaggle_lib bundle")

    if opts.stack not in STACKS:
        raise BundleError(f"--stack {opts.stack!r}: allowed: {', '.join(STACKS)} (lock: install "
                          "the tested jax stack; image: keep the Kaggle image's)")
    pins_file = repo / PINS_FILE
    pins = read_pins(pins_file)
    check_pins_against_lock(pins, read_lock(repo / LOCK_FILE), pins_file)
    if not opts.skip_install and meta.get("enable_internet") is False:
        raise BundleError(f"{meta_path}: enable_internet is false, but the install cell needs "
                          "internet for pip; set it true (or build with --skip-install on an image "
                          "that already has the pins)")

    overrides = dict(opts.overrides)
    if opts.continue_from:
        cont = opts.continue_from
        if "train.resume_from" in overrides:
            raise BundleError("--continue-from and --set train.resume_from both name the "
                              "checkpoints to resume from; give one")
        # Where Kaggle mounts a kernel's outputs; the resolve cell finds them if it is elsewhere.
        overrides["train.resume_from"] = (f"{KAGGLE_INPUT}/{split_id(cont.kernel_id)[1]}/"
                                          f"{cont.checkpoints}")
        # owner/slug/N: kaggle 2.2.4 validate_kernel_string accepts a version and kernels_push
        # sends kernel_sources as they are (kernel_data_sources); the notebook checks what came.
        source = f"{cont.kernel_id}/{cont.version}"
        sources = list(meta.get("kernel_sources") or [])
        meta["kernel_sources"] = sources + [source] * (source not in sources)
        validate_metadata(meta, source=f"{meta_path} (with --continue-from)", folder=folder)
    facts = _check_config(repo, opts.config, overrides)
    warnings += _check_device(meta, facts["device"], str(meta_path))
    warnings += _model_source_warning(meta, facts)

    nb_path = folder / meta["code_file"]
    try:
        # papermill's reader: the cell tags and metadata its parameter injection expects.
        nb = load_notebook_node(str(nb_path))
    except Exception as exc:  # nbformat raises several types for unreadable files
        raise BundleError(f"{nb_path}: not a readable notebook: {exc}") from None
    check_notebook_metadata(nb, str(nb_path))
    cells = nb.cells
    p_index = _find_parameters_cell(cells, str(nb_path))
    _check_blocking_calls(cells, str(nb_path))

    git = git_info(repo, paths=("kaggle_lib", "configs", PINS_FILE))
    # kaggle_lib.evidence reads this when the code runs outside a git checkout (on Kaggle).
    build_info = {"git_sha": git["sha"], "git_dirty": git["dirty"], "kernel_id": meta["id"],
                  "config": opts.config}
    archive = make_archive(repo, {BUILD_INFO: json.dumps(build_info, indent=2).encode()})
    info = {
        "kernel_id": meta["id"], "git": git, "config": opts.config, "config_hash": facts["hash"],
        "device": facts["device"], "overrides": overrides, "run_name": opts.run_name,
        "zip_sha256": sha256_hex(archive), "zip_compression": "bzip2", "zip_bytes": len(archive),
        "pins": pins, "install_cell": not opts.skip_install, "stack": opts.stack,
        "tested_stack": tested_stack(repo),
        "continues_from": opts.continue_from.to_dict() if opts.continue_from else None,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Names this push, not the code (zip_sha256 does that): the run writes it back in
        # evidence/kaggle_bundle.json, which proves that fetched outputs are this push's.
        "push_id": uuid.uuid4().hex,
        "python": sys.version.split()[0],
    }
    if len(archive) > SIZE_WARN_BYTES:
        warnings.append(f"the inlined package is {len(archive) / 2**20:.1f} MiB; check for data "
                        "files that do not belong in kaggle_lib/")

    # Baked parameters: exactly what the run uses; secrets are never parameters.
    baked = {"config_path": opts.config, "overrides": overrides, "run_name": opts.run_name}
    # Every baked parameter must be declared by the parameters cell (papermill's inspection).
    declared = inspect_notebook(str(nb_path))
    missing = [name for name in baked if name not in declared]
    if missing:
        raise BundleError(f"{nb_path}: parameters cell does not assign {', '.join(missing)}; "
                          f"it must define {', '.join(PARAMETER_NAMES)}")

    new = nbformat.v4
    dirty = " (uncommitted changes were bundled)" if git.get("dirty") else ""
    markdown = (f"**Built by `kaggle_lib` bundle** from commit `{git['sha']}`{dirty}, config "
                f"`{opts.config}`. The package travels inside this notebook; the next cells "
                "install the tested jax stack and exact pins, then unpack it. Edit the "
                "repository, not this notebook.")
    head = [new.new_markdown_cell(markdown, metadata={"tags": ["kaggle-bundle-info"]})]
    if not opts.skip_install:
        # pformat writes Python literals (True/None), unlike json.dumps.
        install = fill_template("install_cell.py", {
            "_KL_STACK_MODE": repr(opts.stack),
            "_KL_STACK": pprint.pformat(info["tested_stack"], width=96),
            "_KL_JAX_EXTRA": repr(JAX_EXTRAS.get(facts["device"], "")),
            "_KL_PINS": pprint.pformat(pins, width=96),
            "_KL_REQUIRED": pprint.pformat(required_preinstalled(repo, pins), width=96)})
        head.append(new.new_code_cell(install, metadata={"tags": ["kaggle-install"]}))
    b64 = base64.b64encode(archive).decode()
    chunks = "\n".join(f'    "{b64[i:i + _B64_LINE]}"' for i in range(0, len(b64), _B64_LINE))
    bundle_cell = fill_template("bundle_cell.py", {"_KL_BUNDLE": pprint.pformat(info, width=96),
                                                   "_KL_ZIP_B64": f"(\n{chunks}\n)"})
    head.append(new.new_code_cell(bundle_cell, metadata={"tags": ["kaggle-bundle"]}))
    resolve = new.new_code_cell(fill_template("resolve_cell.py", {}),
                                metadata={"tags": ["kaggle-bundle-resolve"]})
    # The bundle must run before any code cell: insert ahead of the first one.
    first_code = next(i for i, c in enumerate(cells) if c.cell_type == "code")
    body = list(cells)
    body.insert(p_index + 1, resolve)
    body[first_code:first_code] = head
    for cell in body:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.pop("id", None)
    nb.cells = body
    nb.metadata.pop("kaggle", None)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    # papermill's own injection, as in a local run: an `injected-parameters` cell after the
    # `parameters` cell; a papermill run of the bundle with -p would replace it.
    nb = parameterize_notebook(nb, baked, comment="Parameters baked in by the kaggle_lib bundle")
    nb.nbformat, nb.nbformat_minor = 4, 5
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):  # nbformat 4.5 wants cell ids; stable, not random
        cell_id = hashlib.sha1(str(cell.source).encode()).hexdigest()[:12]
        cell["id"] = f"{cell_id[:8]}-{i:03d}" if cell_id in seen else cell_id
        seen.add(cell["id"])
    nbformat.validate(nb)

    _, slug = split_id(str(meta["id"]))
    out = (opts.out_dir or repo / "build" / "kaggle" / slug).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.ipynb"):
        stale.unlink()
    nb_out = out / f"{slug}.ipynb"
    nbformat.write(nb, str(nb_out))
    bundled_meta = dict(meta, code_file=nb_out.name)
    (out / METADATA_FILE).write_text(json.dumps(bundled_meta, indent=2) + "\n")
    (out / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")

    # What is pushed must pass the same checks as what was written.
    validate_metadata(bundled_meta, source=str(out / METADATA_FILE), folder=out)
    check_notebook_metadata(json.loads(nb_out.read_text()), str(nb_out))
    info["sent_bytes"] = sent_notebook_bytes(nb_out)
    (out / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    if info["sent_bytes"] > MAX_SENT_BYTES:
        biggest = sorted(_bundled_files(repo), key=lambda f: -f[1].stat().st_size)[:3]
        raise BundleError(
            f"{nb_out}: the notebook text sent to Kaggle would be {info['sent_bytes']:,} bytes; "
            f"allowed: at most {MAX_SENT_BYTES:,} (Kaggle refuses a kernel source of 1 MB or "
            f"more). Largest bundled files: "
            f"{', '.join(f'{n} ({p.stat().st_size:,} B)' for n, p in biggest)}")
    return Bundle(dir=out, metadata=bundled_meta, notebook=nb_out, info=info, warnings=warnings)
