"""kaggle_lib.compat's version guard: the committed table is the lock's, travels in the Kaggle
bundle, and a mismatch warns once (naming library, both versions, overrides at risk) or, strict,
raises."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest

from kaggle_lib import compat
from kaggle_lib.config import RunConfig
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.kaggle.bundle import REPO_ROOT, make_archive


def test_committed_table_is_what_the_lock_gives() -> None:
    assert compat.tested_versions() == compat.tested_versions_from_lock(
        (REPO_ROOT / "requirements.lock").read_text()), "run `make tested-versions`"
    assert set(compat.tested_versions()) == set(compat.AT_RISK)


def test_table_travels_in_the_kaggle_bundle() -> None:
    names = zipfile.ZipFile(io.BytesIO(make_archive(REPO_ROOT))).namelist()
    assert "kaggle_lib/compat/tested_versions.json" in names


def test_mismatch_warns_once_naming_library_versions_and_overrides(
        capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv(compat.STRICT_ENV, raising=False)
    tested = compat.tested_versions()["qwix"]["version"]
    found = compat.check_versions(installed={"qwix": "9.9.9"})
    assert [(m.library, m.installed, m.tested) for m in found] == [("qwix", "9.9.9", tested)]
    err = capsys.readouterr().err
    assert f"qwix 9.9.9 installed, tested {tested}" in err
    assert "compat.lora_backward" in err
    assert compat.check_versions(installed={"qwix": "9.9.9"}) == found
    assert capsys.readouterr().err == ""  # one warning per process


def test_strict_raises(monkeypatch: Any) -> None:
    monkeypatch.setenv(compat.STRICT_ENV, "1")
    with pytest.raises(compat.VersionMismatchError, match=r"google-tunix 0\.0\.1 installed") as err:
        compat.check_versions(installed={"google-tunix": "0.0.1"})
    assert isinstance(err.value, KaggleLibError) and "KAGGLE_LIB_STRICT_VERSIONS" in err.value.hint
    monkeypatch.delenv(compat.STRICT_ENV)
    with pytest.raises(compat.VersionMismatchError, match="compat.sampler"):
        compat.check_versions(strict=True, installed={"google-tunix": "0.0.1"})


def test_matching_versions_stay_silent(capsys: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv(compat.STRICT_ENV, "1")
    installed = {lib: entry["version"] for lib, entry in compat.tested_versions().items()}
    del installed["kaggle"]  # not installed: skipped
    assert compat.check_versions(installed=installed) == []
    assert capsys.readouterr().err == ""


def test_strict_versions_config_switch_keeps_the_run_hash() -> None:
    base = {"model": {"name": "gemma3-270m"}}
    assert RunConfig(**base).strict_versions is False
    assert RunConfig(**base, strict_versions=True).hash == RunConfig(**base).hash
