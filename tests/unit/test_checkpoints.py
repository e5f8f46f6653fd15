"""The one checkpoint rule (kaggle_lib.training.checkpoints) on real Tunix/Orbax checkpoints of the
tiny Gemma 3: a corrupt or incomplete newest step is set aside and training resumes from the one
before with an uninterrupted run's losses; with none restorable the run stops naming each step;
empty step directories are never picked; the failure analysis agrees.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import training_helpers as th

from kaggle_lib import evidence
from kaggle_lib.training import checkpoints

STEPS, EVERY = 4, 2
BOTH = ("model_params", "optimizer_state")


@pytest.fixture(scope="module")
def base_model() -> Any:
    return th.build_model(th.tiny_config())


@pytest.fixture(scope="module")
def trained(base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, float]]:
    """An uninterrupted run's checkpoints (steps 1, 2, 4) and its losses by step."""
    root = tmp_path_factory.mktemp("ckpt") / "sft"
    losses: dict[int, float] = {}
    _, result = th.train_tiny(th.single_device_mesh(), base_model, steps=STEPS, checkpoint_dir=root,
                              checkpoint_every=EVERY,
                              on_step=lambda r: losses.__setitem__(r["step"], r["loss"]))
    assert result.steps_done == STEPS and checkpoints.complete_steps(root)[-2:] == [2, 4]
    return root, losses


def copy_of(trained_root: Path, tmp_path: Path) -> Path:
    """<tmp>/run/checkpoints/sft: a copy laid out as in a run directory."""
    root = tmp_path / "run" / "checkpoints" / "sft"
    shutil.copytree(trained_root, root)
    return root


def truncate(step_dir: Path) -> None:
    for f in (step_dir / "model_params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])


def flip(step_dir: Path) -> None:
    for f in (step_dir / "optimizer_state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            data = bytearray(f.read_bytes())
            for i in range(0, len(data), 7):
                data[i] ^= 0xFF
            f.write_bytes(bytes(data))


def drop_optimizer(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "optimizer_state")


@pytest.mark.parametrize("damage", [truncate, flip, drop_optimizer],
                         ids=["truncated-params", "flipped-optimizer-bytes", "no-optimizer-state"])
def test_damaged_newest_step_is_set_aside_and_training_resumes_from_the_previous(
        trained: tuple[Path, dict[int, float]], base_model: Any, tmp_path: Path, damage: Any) -> None:
    root = copy_of(trained[0], tmp_path)
    damage(root / "4")
    noted: list[checkpoints.SetAside] = []
    losses: dict[int, float] = {}
    _, result = th.train_tiny(th.single_device_mesh(), base_model, steps=STEPS, checkpoint_dir=root,
                              checkpoint_every=EVERY, on_set_aside=noted.append,
                              on_step=lambda r: losses.__setitem__(r["step"], r["loss"]))
    # Not a fresh optimizer, not a crash: step 2 restored, steps 3 and 4 as uninterrupted.
    assert result.start_step == 2 and result.steps_done == STEPS
    assert sorted(losses) == [3, 4]
    for step, loss in losses.items():
        assert abs(loss - trained[1][step]) <= 1e-5, (step, loss, trained[1][step])
    assert [e.step for e in noted] == [4] and result.set_aside[0]["step"] == 4
    moved = root / "corrupt" / "4"
    assert moved.is_dir() and (moved / "reason.txt").read_text().strip() == noted[0].reason
    if damage is drop_optimizer:
        assert "no optimizer_state" in noted[0].reason
    else:
        assert noted[0].reason.startswith("does not restore:")
    # The re-trained step 4 is complete again, and it is what the record calls the last good one.
    assert checkpoints.latest_complete_step(root) == 4
    assert evidence.last_good_checkpoint(root.parent.parent) == str(root / "4")


def test_no_restorable_step_stops_naming_each_and_the_record_says_so(
        trained: tuple[Path, dict[int, float]], base_model: Any, tmp_path: Path) -> None:
    from kaggle_lib.training.stages import record_set_aside

    root = copy_of(trained[0], tmp_path)
    for step in checkpoints.finalised_steps(root):
        drop_optimizer(root / str(step))
    run_dir = root.parent.parent
    record = evidence.RunRecord(run_dir)
    record.start("run", "demo", "configs/cpu_tiny.yaml")
    with pytest.raises(checkpoints.CheckpointError) as raised:
        th.train_tiny(th.single_device_mesh(), base_model, steps=STEPS, checkpoint_dir=root,
                      checkpoint_every=EVERY, on_set_aside=record_set_aside(record, "sft"))
    message = str(raised.value)
    for step in (1, 2, 4):
        assert f"step {step}: incomplete: no optimizer_state" in message
    assert checkpoints.finalised_steps(root) == []
    listed = record.read_manifest()["checkpoints_set_aside"]
    assert [(e["stage"], e["step"]) for e in listed] == [("sft", 4), ("sft", 2), ("sft", 1)]
    record.fail("train", raised.value)
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert "- last good checkpoint: none" in analysis
    assert "## Checkpoints set aside" in analysis and "`sft` step 4, now" in analysis
    assert record.read_manifest()["failure"]["last_good_checkpoint"] is None


def test_a_step_set_aside_is_relisted_in_earlier_attempts_checkpoint_listings(tmp_path: Path) -> None:
    import json

    from kaggle_lib.evidence import close
    from kaggle_lib.training.stages import record_set_aside

    run_dir = tmp_path / "run"
    record = evidence.RunRecord(run_dir)
    record.start("run", "demo", "configs/cpu_tiny.yaml")
    for step in (2, 4):
        (run_dir / "checkpoints" / "sft" / str(step) / "model_params").mkdir(parents=True)
    record.write_json("checkpoints.json", close.checkpoint_listing(run_dir))
    record.start("run", "demo", "configs/cpu_tiny.yaml")  # attempt 2: attempt 1's listing kept
    entry = checkpoints.set_aside(run_dir / "checkpoints" / "sft", 4, "does not restore: x")
    record_set_aside(record, "sft")(entry)
    listed = json.loads((run_dir / "attempts" / "1" / "checkpoints.json").read_text())
    assert [(e["path"], e.get("moved_from"), e.get("set_aside")) for e in listed] == [
        ("checkpoints/sft/2", None, None),
        ("checkpoints/sft/corrupt/4", "checkpoints/sft/4", "does not restore: x")]
    assert all((run_dir / e["path"]).is_dir() for e in listed)


def test_empty_and_unfinished_step_directories_are_never_picked(
        trained: tuple[Path, dict[int, float]], tmp_path: Path) -> None:
    from kaggle_lib.training.stages import _seed_from_previous

    root = copy_of(trained[0], tmp_path)
    (root / "6").mkdir()  # empty: a copy cut short, or made by hand
    (root / "8.orbax-checkpoint-tmp-99").mkdir()  # Orbax's name while saving
    assert checkpoints.latest_complete_step(root) == 4
    assert evidence.last_good_checkpoint(root.parent.parent) == str(root / "4")
    target = tmp_path / "other" / "checkpoints" / "sft"
    assert _seed_from_previous(str(root), target) == 4
    assert sorted(int(p.name) for p in target.iterdir()) == checkpoints.complete_steps(root)
    # Only empty steps: seeding refuses instead of copying an empty directory.
    only_empty = tmp_path / "only_empty"
    (only_empty / "3").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint step"):
        _seed_from_previous(str(only_empty), tmp_path / "x")


def test_a_seed_whose_newest_step_does_not_restore_falls_back_to_the_previous(
        trained: tuple[Path, dict[int, float]], base_model: Any, tmp_path: Path) -> None:
    """train.resume_from follows the same rule as a resume in place: the seed's newest step is
    truncated, so training continues from its step 2 with the uninterrupted losses; the
    previous run's checkpoints are left as they were."""
    from kaggle_lib.training.stages import _seed_from_previous

    source = copy_of(trained[0], tmp_path)
    truncate(source / "4")
    target = tmp_path / "next" / "checkpoints" / "sft"
    assert _seed_from_previous(str(source), target) == 4
    losses: dict[int, float] = {}
    noted: list[checkpoints.SetAside] = []
    _, result = th.train_tiny(th.single_device_mesh(), base_model, steps=STEPS, checkpoint_dir=target,
                              checkpoint_every=EVERY, on_set_aside=noted.append,
                              on_step=lambda r: losses.__setitem__(r["step"], r["loss"]))
    assert result.start_step == 2 and [e.step for e in noted] == [4]
    for step, loss in losses.items():
        assert abs(loss - trained[1][step]) <= 1e-5, (step, loss, trained[1][step])
    assert (source / "4").is_dir() and not (source / "corrupt").exists()


def test_a_step_without_orbax_metadata_is_incomplete_without_orbax_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A step directory that Orbax never finalised its metadata for counts as missing both
    items, and Orbax's "Metadata file does not exist" warning (shown in the notebook, nothing a
    user can act on) is not triggered on the way."""
    step_dir = tmp_path / "4"
    (step_dir / "model_params").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        assert checkpoints.missing_items(tmp_path, 4) == list(checkpoints.REQUIRED_ITEMS)
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
