"""The self-contained notebook bundle (kaggle_lib.kaggle.bundle)."""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest

from kaggle_lib.kaggle.bundle import (
    BundleError,
    BundleOptions,
    build_bundle,
    read_pins,
    tested_stack,
)
from kaggle_lib.kaggle.metadata import MetadataError
from tests.fakes.fake_kaggle_server import (
    STANDIN_PARAMETERS,
    make_standin_repo,
    standin_metadata,
    standin_notebook,
)

REPO = Path(__file__).resolve().parents[2]
# Install cells run here must never install into the test environment: no index, no config.
_NO_PIP_INDEX = {**{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
                 "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_standin_repo(tmp_path / "repo", REPO)


def _build(repo: Path, tmp_path: Path, **kwargs):
    opts = dict(path=repo, repo_root=repo, config="configs/tpu_standin.yaml",
                out_dir=tmp_path / "out")
    opts.update(kwargs)
    return build_bundle(BundleOptions(**opts))


def _tags(nb) -> list[list[str]]:
    return [c.metadata.get("tags", []) for c in nb.cells]


def _parameters_after_injection(nb) -> dict:
    """Run the parameters cell and papermill's injected cell: the values the notebook sees."""
    namespace: dict = {}
    for tag in ("parameters", "injected-parameters"):
        cell = next(c for c in nb.cells if tag in c.metadata.get("tags", []))
        exec(compile(cell.source, tag, "exec"), namespace)  # noqa: S102 - our own literals
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def _zip_of(nb) -> bytes:
    """Decode the inlined package zip from the bundle cell, as the notebook does."""
    cell = next(c for c in nb.cells if "kaggle-bundle" in c.metadata.get("tags", []))
    tree = ast.parse(cell.source)
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "_KL_ZIP_B64":
            return base64.b64decode(ast.literal_eval(node.value))
    raise AssertionError("no _KL_ZIP_B64 in the bundle cell")


def test_bundle_layout_parameters_and_package(repo: Path, tmp_path: Path) -> None:
    bundle = _build(repo, tmp_path, overrides={"train.sft.max_steps": 3}, run_name="ci-run")
    nb = nbformat.read(str(bundle.notebook), as_version=4)
    nbformat.validate(nb)
    tags = _tags(nb)
    # markdown title first, then info, install, bundle, parameters, papermill's injected
    # parameters, resolve, then the notebook's own
    assert tags[1:7] == [["kaggle-bundle-info"], ["kaggle-install"], ["kaggle-bundle"],
                         ["parameters"], ["injected-parameters"], ["kaggle-bundle-resolve"]]
    assert nb.cells[4].source == STANDIN_PARAMETERS  # the notebook's defaults, untouched
    values = _parameters_after_injection(nb)
    assert values["config_path"] == "configs/tpu_standin.yaml"
    assert values["overrides"] == {"train.sft.max_steps": 3}
    assert values["run_name"] == "ci-run"
    assert values["run_dir"] == ""  # not baked: stays as the notebook had it
    assert all(c.get("outputs", []) == [] for c in nb.cells if c.cell_type == "code")
    assert "kaggle" not in nb.metadata and nb.metadata.kernelspec.name == "python3"

    meta = json.loads((bundle.dir / "kernel-metadata.json").read_text())
    assert meta["code_file"] == bundle.notebook.name == "gemma-tunix-reasoning.ipynb"
    assert meta["machine_shape"] == "TpuV5E8" and "docker_image" not in meta

    data = _zip_of(nb)
    assert hashlib.sha256(data).hexdigest() == bundle.info["zip_sha256"]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert "kaggle_lib/__init__.py" in names and "kaggle_lib/kaggle/bundle.py" in names
    assert "configs/tpu_standin.yaml" in names
    build_info = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("kaggle_lib/_build_info.json"))
    assert build_info["git_sha"] == bundle.info["git"]["sha"]  # read by kaggle_lib.evidence
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert bundle.info["git"]["sha"]  # "unknown" outside git, a sha inside
    written = json.loads((bundle.dir / "bundle.json").read_text())
    assert written["zip_sha256"] == bundle.info["zip_sha256"]


def test_bundle_zip_is_deterministic_and_each_build_has_a_fresh_push_id(
        repo: Path, tmp_path: Path) -> None:
    """The same code pushed twice: same zip sha256 (names the code), two push ids (name the
    pushes), each in the notebook's bundle info that the run writes back."""
    first, second = (_build(repo, tmp_path, out_dir=tmp_path / name) for name in ("a", "b"))
    assert first.info["zip_sha256"] == second.info["zip_sha256"]
    assert first.info["push_id"] != second.info["push_id"]
    for bundle in (first, second):
        assert f"'push_id': '{bundle.info['push_id']}'" in bundle.notebook.read_text()
        assert json.loads((bundle.dir / "bundle.json").read_text())["push_id"] == \
            bundle.info["push_id"]


def test_install_cell_installs_the_tested_stack_then_pins_with_no_deps(
        repo: Path, tmp_path: Path) -> None:
    nb = nbformat.read(str(_build(repo, tmp_path).notebook), as_version=4)
    install = nb.cells[2].source
    assert '"--no-deps"' in install
    assert "_KL_STACK_MODE = 'lock'" in install and "_KL_JAX_EXTRA = 'tpu'" in install
    baked = next(n.value for n in ast.parse(install).body
                 if isinstance(n, ast.AnnAssign | ast.Assign) and "_KL_STACK" in ast.unparse(n)
                 and "_KL_STACK_MODE" not in ast.unparse(n))
    assert ast.literal_eval(baked) == tested_stack(repo)
    assert "'gguf': '0.19.0'" in install
    ast.parse(install)
    pins = read_pins(REPO / "requirements-kaggle.txt")
    assert not {"jax", "jaxlib", "libtpu", "flax", "google-tunix", "qwix"} & set(pins)


def _install_cell_of(bundle) -> str:
    nb = nbformat.read(str(bundle.notebook), as_version=4)
    return next(c.source for c in nb.cells if "kaggle-install" in c.metadata.get("tags", []))


def test_install_cell_checks_version_ranges_and_names_both_versions(
        repo: Path, tmp_path: Path) -> None:
    """A requirement the image has at the wrong version fails the cell, naming the package,
    what kaggle_lib needs and what the image has; presence alone is not enough."""
    import importlib.metadata as md

    pyproject = repo / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(
        '"nbformat",', '"nbformat>=999", "kaggle-lib-absent-package>=1",'))
    source = _install_cell_of(_build(repo, tmp_path, config="configs/cpu_standin.yaml"))
    assert "'nbformat>=999'" in source and "'gguf==0.19.0'" not in source  # pins apart
    (tmp_path / "cell.py").write_text(source)
    proc = subprocess.run([sys.executable, "cell.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=_NO_PIP_INDEX)
    assert proc.returncode != 0
    assert (f"nbformat: kaggle_lib needs nbformat>=999, this image has {md.version('nbformat')}"
            in proc.stderr)
    assert "kaggle-lib-absent-package: kaggle_lib needs kaggle-lib-absent-package>=1, this " \
           "image has none" in proc.stderr
    # The jax stack is printed, installed next to the lock's, before the check.
    assert re.search(rf"^  flax +{re.escape(md.version('flax'))} +0\.12\.8$", proc.stdout, re.M)


def test_install_cell_passes_on_an_image_that_meets_the_requirements(
        repo: Path, tmp_path: Path) -> None:
    bundle = _build(repo, tmp_path, config="configs/cpu_standin.yaml")
    (tmp_path / "cell.py").write_text(_install_cell_of(bundle))
    proc = subprocess.run([sys.executable, "cell.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=_NO_PIP_INDEX)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "'gguf': '0.19.0'" in proc.stdout.splitlines()[-1]


def _fake_distribution(folder: Path, name: str, version: str) -> Path:
    """A dist-info that importlib.metadata finds before site-packages (put `folder` first on
    PYTHONPATH): an image with another version of `name`, nothing installed."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def test_stack_image_keeps_the_image_stack_and_lock_refuses_it(
        repo: Path, tmp_path: Path) -> None:
    """An image with flax 9.9.9: the default stops naming both versions (pip cannot reach an
    index here, so nothing is installed); --stack image prints it and goes on."""
    env = dict(_NO_PIP_INDEX, PYTHONPATH=str(_fake_distribution(tmp_path / "image", "flax",
                                                                 "9.9.9")))
    for stack in ("lock", "image"):
        bundle = _build(repo, tmp_path, config="configs/cpu_standin.yaml", stack=stack,
                        out_dir=tmp_path / stack)
        assert bundle.info["stack"] == stack
        (tmp_path / "cell.py").write_text(_install_cell_of(bundle))
        proc = subprocess.run([sys.executable, "cell.py"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, env=env)
        if stack == "lock":
            assert proc.returncode != 0
            assert "installing the tested jax stack: flax==0.12.8" in proc.stdout
            assert "flax: installed 9.9.9, requirements.lock has 0.12.8" in proc.stderr
        else:
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert re.search(r"^  flax +9\.9\.9 +0\.12\.8$", proc.stdout, re.M)
            assert "stack: image - kaggle_lib.compat warns" in proc.stdout


def test_unknown_stack_is_refused(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"--stack 'newest': allowed: lock, image"):
        _build(repo, tmp_path, stack="newest")


@pytest.mark.parametrize("config", ["configs/tpu_gemma3_1b.yaml", "configs/tpu_gemma2_2b.yaml"])
def test_tpu_configs_load_the_attached_kaggle_copy(config: str, tmp_path: Path) -> None:
    """No HF token or editor-attached secret needed by default; `hf` is one override away."""
    from kaggle_lib.config import load_config
    from kaggle_lib.kaggle.metadata import load_metadata
    from kaggle_lib.models.registry import get_spec

    run = load_config(str(REPO / config), {})
    assert run.model.source == "kaggle"
    assert get_spec(run.model.name).kaggle_handle in load_metadata(REPO)["model_sources"]
    assert load_config(str(REPO / config), {"model.source": "hf"}).model.source == "hf"


def test_skip_install_leaves_out_the_install_cell(repo: Path, tmp_path: Path) -> None:
    nb = nbformat.read(str(_build(repo, tmp_path, skip_install=True).notebook), as_version=4)
    assert ["kaggle-install"] not in _tags(nb)


def test_bundle_runs_without_the_repository(repo: Path, tmp_path: Path) -> None:
    """Execute the built notebook's code cells in a bare interpreter outside the repo.

    The interpreter cannot import the checkout's kaggle_lib (isolated mode, cwd elsewhere), so
    the stand-in's last cell only works if the bundle cell unpacked and imported its own copy.
    """
    bundle = _build(repo, tmp_path, config="configs/cpu_standin.yaml", run_name="r1")
    nb = nbformat.read(str(bundle.notebook), as_version=4)
    script = "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")
    (tmp_path / "nb.py").write_text(script)
    work = tmp_path / "root" / "kaggle" / "working"
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "PYTHON"))}
    env.update(KAGGLE_KERNEL_RUN_TYPE="Batch", KAGGLE_LIB_KAGGLE_ROOT=str(tmp_path / "root"),
               TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    # -I -S: no PYTHONPATH, no cwd, no .pth files, so the venv's editable kaggle_lib finder is
    # not installed; site-packages is added as a plain path for the third-party packages.
    purelib = sysconfig.get_paths()["purelib"]
    code = ("import importlib.util, sys\n"
            f"sys.path.append({purelib!r})\n"
            "assert importlib.util.find_spec('kaggle_lib') is None, 'repo kaggle_lib visible'\n"
            f"exec(compile(open({str(tmp_path / 'nb.py')!r}).read(), 'nb.py', 'exec'))\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                          cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((work / "standin.json").read_text())
    bundle_root = tmp_path / "tmp" / "kaggle_lib_bundle"
    assert Path(out["kl_file"]).resolve().is_relative_to(bundle_root.resolve())
    unpacked = bundle_root / bundle.info["zip_sha256"][:16]
    assert Path(out["config_path"]) == unpacked / "configs" / "cpu_standin.yaml"
    assert out["run_name"] == "r1" and out["overrides"] == {}
    assert out["sha"] == bundle.info["git"]["sha"]
    recorded = json.loads((work / "evidence" / "kaggle_bundle.json").read_text())
    assert recorded["zip_sha256"] == bundle.info["zip_sha256"]
    assert "all pinned packages already installed" in proc.stdout


def test_corrupted_bundle_is_refused(repo: Path, tmp_path: Path) -> None:
    nb = nbformat.read(str(_build(repo, tmp_path).notebook), as_version=4)
    cell = next(c for c in nb.cells if "kaggle-bundle" in c.metadata.get("tags", []))
    tampered = cell.source.replace("'zip_sha256': '", "'zip_sha256': '0", 1)
    (tmp_path / "cell.py").write_text(tampered)
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "cell.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "bundle corrupted" in proc.stderr


def test_pins_must_be_exact_and_leave_jax_alone(tmp_path: Path) -> None:
    pins = tmp_path / "requirements-kaggle.txt"
    pins.write_text("# comment\ngoogle-tunix>=0.1.7\n")
    with pytest.raises(BundleError, match=r"requirements-kaggle.txt:2: 'google-tunix>=0.1.7' "
                                          "is not an exact pin"):
        read_pins(pins)
    pins.write_text("gguf==0.19.0\njax==0.6.2\n")
    with pytest.raises(BundleError, match="jax must not be pinned here"):
        read_pins(pins)


def test_pins_must_match_the_lock(repo: Path, tmp_path: Path) -> None:
    (repo / "requirements-kaggle.txt").write_text("gguf==0.18.0\n")
    with pytest.raises(BundleError, match=r"gguf==0.18.0 \(lock has 0.19.0\)"):
        _build(repo, tmp_path)


def test_notebook_rules(repo: Path, tmp_path: Path) -> None:
    nb_path = repo / "notebooks" / "submission.ipynb"
    nb = nbformat.from_dict(standin_notebook(["name = input('token? ')"]))
    nbformat.write(nb, str(nb_path))
    with pytest.raises(BundleError, match="has no stdin and would hang"):
        _build(repo, tmp_path)

    nb = nbformat.from_dict(standin_notebook())
    nb.metadata["kaggle"] = {"accelerator": "nvidiaTeslaT4", "dockerImageVersionId": 1}
    nbformat.write(nb, str(nb_path))
    with pytest.raises(MetadataError, match="metadata.kaggle has accelerator"):
        _build(repo, tmp_path)

    nb = nbformat.from_dict(standin_notebook())
    nb.cells[1].metadata["tags"] = []
    nbformat.write(nb, str(nb_path))
    with pytest.raises(BundleError, match="exactly one code cell tagged 'parameters', found 0"):
        _build(repo, tmp_path)


def test_config_rules(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="available: cpu_standin.yaml, tpu_standin.yaml"):
        _build(repo, tmp_path, config="configs/nope.yaml")
    with pytest.raises(BundleError, match="must be a path under configs/"):
        _build(repo, tmp_path, config="/etc/passwd")
    with pytest.raises(BundleError,
                       match=r"invalid config configs/tpu_standin.yaml \(with overrides\)"):
        _build(repo, tmp_path, overrides={"train.sft.max_steps": 0})


def test_device_and_metadata_must_agree(tmp_path: Path) -> None:
    meta = standin_metadata(enable_tpu=False, machine_shape=None)
    repo = make_standin_repo(tmp_path / "repo", REPO, metadata=meta)
    with pytest.raises(BundleError,
                       match="the config trains on device tpu, so machine_shape must be 'TpuV5E8'"):
        _build(repo, tmp_path)
    bundle = _build(make_standin_repo(tmp_path / "repo2", REPO), tmp_path,
                    config="configs/cpu_standin.yaml")
    assert any("accelerator session would sit idle" in w for w in bundle.warnings)


def test_internet_is_needed_for_the_install_cell(tmp_path: Path) -> None:
    repo = make_standin_repo(tmp_path / "repo", REPO,
                             metadata=standin_metadata(enable_internet=False))
    with pytest.raises(BundleError, match="enable_internet is false, but the install cell needs"):
        _build(repo, tmp_path)
    assert _build(repo, tmp_path, skip_install=True).metadata["enable_internet"] is False


def test_owner_override(repo: Path, tmp_path: Path) -> None:
    bundle = _build(repo, tmp_path, owner="someone")
    assert bundle.kernel_id == "someone/gemma-tunix-reasoning"
    assert json.loads((bundle.dir / "kernel-metadata.json").read_text())["id"] == bundle.kernel_id


def test_injected_parameters_override_multiline_defaults_and_missing_names_are_named(
        repo: Path, tmp_path: Path) -> None:
    nb_path = repo / "notebooks" / "submission.ipynb"
    nb = nbformat.from_dict(standin_notebook())
    nb.cells[1].source = ('config_path = "a"\noverrides = {\n    "x": 1,\n}\nrun_name = ""\n'
                          'run_dir = ""\n')
    nbformat.write(nb, str(nb_path))
    built = nbformat.read(str(_build(repo, tmp_path, overrides={"train.sft.max_steps": 2},
                                     run_name="n").notebook), as_version=4)
    values = _parameters_after_injection(built)
    assert values["overrides"] == {"train.sft.max_steps": 2}
    assert values["run_name"] == "n" and values["config_path"] == "configs/tpu_standin.yaml"
    nb.cells[1].source = 'config_path = "a"\noverrides = {}\nrun_dir = ""\n'
    nbformat.write(nb, str(nb_path))
    with pytest.raises(BundleError, match="parameters cell does not assign run_name"):
        _build(repo, tmp_path)


def test_cell_templates_are_filled_completely(repo: Path, tmp_path: Path) -> None:
    from kaggle_lib.kaggle.bundle import TEMPLATES_DIR, fill_template

    nb = nbformat.read(str(_build(repo, tmp_path).notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            ast.parse(cell.source)
            assert "filled in by kaggle_lib.kaggle.bundle" not in cell.source
    assert sorted(p.name for p in TEMPLATES_DIR.glob("*.py")) == [
        "bundle_cell.py", "install_cell.py", "resolve_cell.py"]
    with pytest.raises(BundleError, match="lines to fill are"):
        fill_template("install_cell.py", {"_KL_PINS": "{}"})


def test_continued_bundle_resumes_from_the_mounted_outputs_of_that_version(
        repo: Path, tmp_path: Path) -> None:
    """On Kaggle: train.resume_from points at version 7's checkpoints wherever they are mounted
    under /kaggle/input; outputs of another version (Kaggle attaches the latest) stop the run
    naming both bundle-info digests."""
    from kaggle_lib.kaggle.bundle import find_continuation
    from tests.integration.test_kaggle_push import checkpoint_outputs

    fetched = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v7"
    mounted = tmp_path / "root" / "kaggle" / "input" / "notebooks" / "gemma-tunix-reasoning"
    for name, content in checkpoint_outputs().items():
        for base in (fetched, mounted):
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (base / name).write_bytes(content)
    cont = find_continuation("tester/gemma-tunix-reasoning/v7", tmp_path / "evidence")
    nb = nbformat.read(str(_build(repo, tmp_path, config="configs/cpu_standin.yaml",
                                  continue_from=cont).notebook), as_version=4)
    (tmp_path / "nb.py").write_text("\n\n".join(
        c.source for c in nb.cells
        if c.cell_type == "code" and "kaggle-install" not in c.metadata.get("tags", [])))
    work = tmp_path / "root" / "kaggle" / "working"
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(KAGGLE_KERNEL_RUN_TYPE="Batch", KAGGLE_LIB_KAGGLE_ROOT=str(tmp_path / "root"),
               TMPDIR=str(tmp_path))

    def run() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(tmp_path / "nb.py")], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)

    proc = run()
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = json.loads((work / "standin.json").read_text())["overrides"]
    assert resumed == {"train.resume_from": str(mounted / cont.checkpoints)}
    assert "continuing tester/gemma-tunix-reasoning v7: run r1" in proc.stdout

    latest = b'{"zip_sha256": "v9"}\n'
    (mounted / "evidence" / "kaggle_bundle.json").write_bytes(latest)
    proc = run()
    assert proc.returncode != 0
    assert (f"are not version 7's (evidence/kaggle_bundle.json sha256 "
            f"{hashlib.sha256(latest).hexdigest()}, version 7's "
            f"{cont.outputs_bundle_sha256})") in proc.stderr
