"""kernel-metadata.json and notebook-metadata rules (kaggle_lib.kaggle.metadata)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_lib.kaggle.metadata import (
    MetadataError,
    check_notebook_metadata,
    load_metadata,
    slugify,
    validate_metadata,
)
from tests.fakes.fake_kaggle_server import standin_metadata

REPO = Path(__file__).resolve().parents[2]


def _error(meta: dict, **kwargs) -> str:
    with pytest.raises(MetadataError) as info:
        validate_metadata(meta, source="kernel-metadata.json", **kwargs)
    return str(info.value)


def test_shipped_metadata_is_valid_for_a_tpu_push() -> None:
    meta = load_metadata(REPO)
    warnings = validate_metadata(meta, source="kernel-metadata.json", folder=REPO,
                                 require_tpu=True)
    assert warnings == []
    assert meta["machine_shape"] == "TpuV5E8" and meta["enable_tpu"] is True
    assert "docker_image" not in meta
    assert meta["enable_internet"] is True  # the install cell needs pip
    assert all(src.rsplit("/", 1)[1].isdigit() for src in meta["model_sources"])


def test_standin_metadata_is_valid() -> None:
    assert validate_metadata(standin_metadata(), require_tpu=True) == []


def test_short_slug_is_rejected() -> None:
    msg = _error(standin_metadata(id="tester/gtr", title="Gtr"))
    assert "kernel-metadata.json" in msg
    assert "slug 'gtr' is shorter than 5" in msg
    assert "title = 'Gtr': required, at least 5 characters" in msg


def test_docker_image_is_rejected() -> None:
    msg = _error(standin_metadata(docker_image="gcr.io/kaggle-images/python@sha256:abc"))
    assert "docker_image = 'gcr.io/kaggle-images/python@sha256:abc': remove it" in msg
    assert "CPU image" in msg


def test_unversioned_model_source_is_rejected() -> None:
    msg = _error(standin_metadata(model_sources=["google/gemma-3/flax/gemma3-1b-it"]))
    assert "model_sources[0] = 'google/gemma-3/flax/gemma3-1b-it': no version" in msg
    assert "owner/model/framework/variation/VERSION" in msg


@pytest.mark.parametrize("source", ["google/gemma-3/flax/gemma3-1b-it/latest", "google/gemma-3",
                                    "google/gemma-3/flax/x/1/2", 7])
def test_malformed_model_sources_are_rejected(source: object) -> None:
    assert "model_sources[0]" in _error(standin_metadata(model_sources=[source]))


@pytest.mark.parametrize(("shape", "replacement"), [
    ("NvidiaTeslaP100", "NvidiaTeslaT4"), (" nvidiateslap100 ", "NvidiaTeslaT4"),
    ("TpuV38", "TpuV5E8"), ("Tpu1VmV38", "TpuV5E8"), (" tpu1vmv38 ", "TpuV5E8"),
    ("TpuV232", "CPU"), ("TpuV2256", "CPU")])
def test_retired_shapes_are_rejected_naming_the_replacement(shape: str, replacement: str) -> None:
    """kaggle-cli PR 1192: the server silently runs the replacement instead."""
    gpu = "nvidia" in shape.lower()
    msg = _error(standin_metadata(machine_shape=shape, enable_gpu=gpu, enable_tpu=not gpu))
    assert "is retired; the server would run " + replacement in msg and "PR 1192" in msg


def test_unknown_shape_lists_allowed() -> None:
    msg = _error(standin_metadata(machine_shape="TpuV6"))
    assert "not a machine shape kaggle-cli documents" in msg and "TpuV5E8" in msg


@pytest.mark.parametrize("shape", ["TpuV6E8", "NvidiaL4", "NvidiaL4X1", "NvidiaH100",
                                   "NvidiaRtxPro6000", "NvidiaTeslaT4", "NvidiaTeslaA100"])
def test_shapes_kaggle_cli_documents_are_accepted(shape: str) -> None:
    """kaggle-cli docs/kernels.md (Sep 2026) lists these accelerators."""
    tpu = shape.startswith("Tpu")
    assert validate_metadata(standin_metadata(machine_shape=shape, enable_tpu=tpu,
                                              enable_gpu=not tpu)) == []


def test_admin_only_t4_highmem_and_undocumented_gpu_are_refused() -> None:
    """kaggle-cli PR 1198: NvidiaTeslaT4Highmem is an internal admin-only pool."""
    msg = _error(standin_metadata(machine_shape="NvidiaTeslaT4Highmem", enable_tpu=False,
                                  enable_gpu=True))
    assert "NvidiaTeslaT4Highmem is an internal admin-only pool (kaggle-cli PR 1198)" in msg
    assert "Use 'NvidiaTeslaT4'" in msg
    msg = _error(standin_metadata(machine_shape="Gpu", enable_tpu=False, enable_gpu=True))
    assert "'Gpu': not a machine shape kaggle-cli documents" in msg
    assert "NvidiaTeslaT4Highmem" not in msg and "NvidiaTeslaP100" not in msg  # not offered


def test_image_pinning_is_original_in_the_shipped_metadata_and_warned_when_unset() -> None:
    assert load_metadata(REPO)["docker_image_pinning_type"] == "original"
    warnings = validate_metadata(standin_metadata(docker_image_pinning_type=None))
    assert any("docker_image_pinning_type is not set" in w for w in warnings)
    assert "allowed: original, latest" in _error(standin_metadata(
        docker_image_pinning_type="newest"))


def test_require_tpu_needs_the_v5e_shape_and_flag() -> None:
    msg = _error(standin_metadata(machine_shape=None, enable_tpu=False), require_tpu=True)
    assert "enable_tpu: must be true" in msg
    assert "machine_shape = None: must be 'TpuV5E8'" in msg


def test_tpu_shape_needs_enable_tpu() -> None:
    assert "needs enable_tpu: true" in _error(standin_metadata(enable_tpu=False))


def test_gpu_and_tpu_together_are_rejected() -> None:
    assert "both true" in _error(standin_metadata(enable_gpu=True))


def test_id_with_version_and_title_mismatch() -> None:
    assert "must not contain a version" in _error(
        standin_metadata(id="tester/gemma-tunix-reasoning/3"))
    msg = _error(standin_metadata(title="Something Else Entirely"))
    assert "makes the slug 'something-else-entirely'" in msg


def test_placeholder_owner_from_kaggle_template_is_rejected() -> None:
    msg = _error(standin_metadata(id="INSERT_USERNAME/gemma-tunix-reasoning"))
    assert "not a Kaggle username" in msg


def test_types_and_unknown_keys() -> None:
    msg = _error(standin_metadata(enable_internet="true", enable_tpus=True, keywords="llm"))
    assert "enable_internet = 'true': must be true or false" in msg
    assert "unknown key(s) enable_tpus; allowed keys:" in msg
    assert "keywords = 'llm': must be a list" in msg


def test_code_file_must_exist_and_stay_inside(tmp_path: Path) -> None:
    msg = _error(standin_metadata(code_file="missing.ipynb"), folder=tmp_path)
    assert "code_file = 'missing.ipynb': file not found" in msg
    assert "relative path inside" in _error(standin_metadata(code_file="../x.ipynb"))


def test_all_problems_are_listed_together() -> None:
    msg = _error(standin_metadata(id="tester/abc", docker_image="x", model_sources=["a/b/c/d"]))
    assert msg.count("\n  - ") >= 3


def test_load_metadata_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="file not found"):
        load_metadata(tmp_path)
    (tmp_path / "kernel-metadata.json").write_text("{not json")
    with pytest.raises(MetadataError, match=r"kernel-metadata.json: not valid JSON"):
        load_metadata(tmp_path)
    (tmp_path / "kernel-metadata.json").write_text(json.dumps([1]))
    with pytest.raises(MetadataError, match="top level must be a JSON object"):
        load_metadata(tmp_path)


def test_notebook_accelerator_metadata_is_rejected() -> None:
    nb = {"metadata": {"kaggle": {"accelerator": "nvidiaTeslaT4", "dockerImageVersionId": 31041,
                                  "isInternetEnabled": True}}, "cells": []}
    with pytest.raises(MetadataError) as info:
        check_notebook_metadata(nb, "nb.ipynb")
    assert "nb.ipynb: notebook metadata.kaggle has accelerator, dockerImageVersionId" in str(
        info.value)
    check_notebook_metadata({"metadata": {"kaggle": {"isInternetEnabled": True}}}, "ok.ipynb")


def test_slugify_matches_kaggle_for_ascii_titles() -> None:
    assert slugify("Gemma Tunix Reasoning") == "gemma-tunix-reasoning"
    assert slugify("  Gemma 3: 1B -- IT! ") == "gemma-3-1b-it"
