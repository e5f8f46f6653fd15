"""`python -m kaggle_lib run` parameters (issue 11): secrets refused at any depth and by value,
paths resolved once against the caller's directory, `-p run_dir` honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_lib import auth, cli

TOKEN = "hf_" + "abcdefghijklmnopqrstuvwxyz0123456789"
KAGGLE_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # legacy Kaggle key: 32 hex, not token-shaped
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # W&B keys: 40 hex


def refused(pairs: list[list[str]], yamls: list[str] | None = None) -> str:
    with pytest.raises(SystemExit) as raised:
        cli._parse_params(pairs, yamls or [])
    return str(raised.value.code)


def test_a_token_inside_a_nested_override_is_refused_by_path(capsys: pytest.CaptureFixture[str]) -> None:
    message = refused([["overrides", f"{{train: {{sft: {{note: 'x {TOKEN} y'}}}}}}"]])
    assert "'overrides.train.sft.note'" in message
    assert "secrets are never passed as papermill parameters" in message
    assert "abcdefghijklmnop" not in message + capsys.readouterr().out
    message = refused([], [f"overrides:\n  sample.prompts: ['fine', '{TOKEN}']"])
    assert "'overrides.sample.prompts[1]'" in message


@pytest.mark.parametrize(("var", "value"), [("KAGGLE_KEY", KAGGLE_KEY), ("WANDB_API_KEY", WANDB_KEY)])
def test_known_secret_values_are_refused_though_not_token_shaped(
        monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    message = refused([["run_name", f"run-{value}"]])
    assert "'run_name'" in message and value not in message
    message = refused([], [f"overrides: {{'data.train': 'jsonl:/data/{value}.jsonl'}}"])
    assert "'overrides.data.train'" in message and value not in message


def test_secret_looking_names_are_still_refused_and_ordinary_ones_pass() -> None:
    assert "'hf_token'" in refused([["hf_token", "anything"]])
    # Nested config keys may say "tokens": only values are checked below the top level.
    params = cli._parse_params([["overrides", "{eval.max_new_tokens: 8}"], ["run_name", "ok"]], [])
    assert params == {"overrides": {"eval.max_new_tokens": 8}, "run_name": "ok"}


def test_overrides_that_are_not_a_mapping_are_refused() -> None:
    assert "must be a mapping" in refused([["overrides", "[1, 2]"]])


def test_a_key_given_twice_in_yaml_parameters_is_refused() -> None:
    # papermill's -y keeps the last value silently; ours names the key and both lines.
    message = refused([], ["run_name: a\nrun_name: b"])
    assert "duplicate key 'run_name' on line 2 (first given on line 1)" in message


def test_a_parameter_given_by_two_flags_is_refused_not_overwritten() -> None:
    # papermill would keep only the second mapping: the first -y's overrides lost silently.
    message = refused([], ["overrides: {train.sft.max_steps: 2}", "overrides: {eval.batch_size: 2}"])
    assert message == ("parameter 'overrides' given twice (-y #1 and -y #2); give it once (all "
                       "overrides in one mapping)")
    assert "(-y #1 and -p run_name)" in refused([["run_name", "b"]], ["run_name: a"])
    assert "(-p run_name and -p run_name)" in refused([["run_name", "a"], ["run_name", "b"]])


def test_the_one_secret_list_covers_wandb_for_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "WANDB_API_KEY" in auth.SECRET_ENV_VARS
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    auth.register_environment_secrets()
    assert auth.redact(f"wandb key={WANDB_KEY}") == f"wandb key={auth.REDACTED}"


def test_paths_resolve_against_the_callers_directory(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config, run_dir = cli.resolve_paths({"run_dir": "runs/x", "config_path": "c.yaml"}, None, "")
    assert run_dir == tmp_path / "runs" / "x" and config == tmp_path / "c.yaml"
    config, run_dir = cli.resolve_paths({}, "sub/c.yaml", "r")
    assert config == tmp_path / "sub" / "c.yaml" and run_dir == tmp_path / "r"
    # The same path given both ways is fine; two different ones are refused.
    assert cli.resolve_paths({"run_dir": str(tmp_path / "r")}, None, "r")[1] == tmp_path / "r"
    with pytest.raises(SystemExit, match="disagree"):
        cli.resolve_paths({"run_dir": "a"}, None, "b")
    # No config given: the checkout's default, wherever the command runs.
    assert cli.resolve_paths({}, None, "")[0] == cli.REPO_ROOT / cli.DEFAULT_CONFIG
