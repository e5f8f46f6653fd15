"""The one rule for "the latest complete checkpoint", shared by resume, seeding
(`train.resume_from`), `python -m kaggle_lib eval` and `failure_analysis.md`.

A step is complete when Orbax lists it as finalised (`orbax.checkpoint.utils.checkpoint_steps`),
its step metadata lists both items Tunix writes (`model_params`, `optimizer_state`), and it
restores. The last needs the model, so training probes it before Tunix's trainer is built
(`resume_from_newest_restorable`): the trainer restores the newest step and would fail on a
corrupt one, or silently start a fresh optimizer without the optimizer state
(tunix/sft/checkpoint_manager.py restores it only "if found"). A step that is not complete is
moved to `<root>/corrupt/<step>/` with a `reason.txt` and training continues from the one
before; with several processes each probes, a failure on any rejects it on all, and process 0
moves it (docs/MULTIHOST.md). When none restores: `CheckpointError` naming each step and why.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaggle_lib.errors import KaggleLibError

log = logging.getLogger(__name__)

REQUIRED_ITEMS = ("model_params", "optimizer_state")
CORRUPT_DIR = "corrupt"


class CheckpointError(KaggleLibError, RuntimeError):
    """No checkpoint step restores; the message names each step and why."""

    hint = ("No checkpoint step of this run restores; each is listed above with the reason and "
            "was moved to checkpoints/<stage>/corrupt/. Re-run in the same directory to train from "
            "the start, or set train.resume_from to another run's checkpoint directory.")


@dataclasses.dataclass(frozen=True)
class SetAside:
    """A step that did not restore, moved out of the checkpoint root."""

    step: int
    path: str  # where it went: <root>/corrupt/<step>[-n]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def finalised_steps(root: Path | str | None) -> list[int]:
    """Steps Orbax considers finalised under `root` (ascending); [] when there is no root."""
    if root is None or not Path(root).is_dir():
        return []
    # orbax, flax and tunix import jax: imported here because the run record reads checkpoints
    # (evidence.last_good_checkpoint) in runs that failed before jax's platform was set.
    from orbax.checkpoint import utils as ocp_utils

    return sorted(ocp_utils.checkpoint_steps(str(root)))


# The step metadata file Orbax writes when a step is finalised (orbax.checkpoint._src.metadata).
STEP_METADATA_FILE = "_CHECKPOINT_METADATA"


def missing_items(root: Path | str, step: int) -> list[str]:
    """REQUIRED_ITEMS the step's Orbax metadata does not list (all, if it is unreadable)."""
    import orbax.checkpoint as ocp  # imports jax: see finalised_steps

    step_dir = Path(root) / str(step)
    if not (step_dir / STEP_METADATA_FILE).is_file():
        # Orbax's reader would log "Metadata file does not exist" (absl WARNING) into the
        # notebook before failing: a line nobody can act on, so the answer is given here.
        return list(REQUIRED_ITEMS)
    try:
        metadata = ocp.metadata.get_step_metadata(step_dir)
    except Exception:  # noqa: BLE001 - unreadable metadata means "not complete"
        return list(REQUIRED_ITEMS)
    names = set(metadata.item_handlers or {}) if isinstance(metadata.item_handlers, dict) else set()
    present = {name for name in names if (step_dir / name).is_dir()}
    return [item for item in REQUIRED_ITEMS if item not in present]


def complete_steps(root: Path | str | None) -> list[int]:
    """Finalised steps whose metadata lists model params and optimizer state (ascending)."""
    return [s for s in finalised_steps(root)
            if not missing_items(root, s)]  # type: ignore[arg-type]


def latest_complete_step(root: Path | str | None) -> int | None:
    return max(complete_steps(root), default=None)


def _set_aside_target(root: Path, step: int) -> Path:
    """`<root>/corrupt/<step>`, suffixed (-2, -3, ...) if taken."""
    target = root / CORRUPT_DIR / str(step)
    n = 1
    while target.exists():
        n += 1
        target = root / CORRUPT_DIR / f"{step}-{n}"
    return target


def set_aside(root: Path | str, step: int, reason: str, target: Path | None = None) -> SetAside:
    """Move `<root>/<step>` to `target` (default `_set_aside_target`), with reason.txt."""
    root = Path(root)
    target = target or _set_aside_target(root, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(root / str(step)), str(target))
    (target / "reason.txt").write_text(reason + "\n")
    log.warning("checkpoint step %d under %s set aside to %s: %s", step, root, target, reason)
    return SetAside(step=step, path=str(target), reason=reason)


def _process_count() -> int:
    import jax

    return jax.process_count()


def _first_failure(step: int, reason: str | None) -> str | None:
    """None when every process restored `step`; else this process's reason, or the first failing
    process's id (its log has the reason)."""
    if _process_count() == 1:
        return reason
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    # One jax collective: every process learns which processes failed.
    failed = np.asarray(multihost_utils.process_allgather(np.array(reason is not None))).ravel()
    if not failed.any():
        return None
    if reason is not None:
        return f"{reason} (process {jax.process_index()})"
    return f"does not restore on process {int(np.argmax(failed))} (its log has the error)"


def _set_aside_once(root: Path | str, step: int, reason: str) -> SetAside:
    """`set_aside` by process 0 only, on shared storage (a move on every process would race): all
    compute the target, meet, process 0 moves, they meet again."""
    if _process_count() == 1:
        return set_aside(root, step, reason)
    import jax
    from jax.experimental import multihost_utils

    target = _set_aside_target(Path(root), step)
    multihost_utils.sync_global_devices(f"kaggle_lib checkpoint {step}: target chosen")
    if jax.process_index() == 0:
        set_aside(root, step, reason, target=target)
    multihost_utils.sync_global_devices(f"kaggle_lib checkpoint {step}: set aside")
    return SetAside(step=step, path=str(target), reason=reason)


def resume_from_newest_restorable(
    root: Path | str | None, probe: Callable[[int], None],
    on_set_aside: Callable[[SetAside], None] = lambda entry: None,
) -> tuple[int | None, list[SetAside]]:
    """Make the newest step under `root` one that restores (`probe(step)` raises if it does not),
    setting aside those that do not: (resume step or None, steps set aside). CheckpointError
    when steps existed and none restored."""
    removed: list[SetAside] = []
    if root is None or not Path(root).is_dir():
        return None, removed
    for step in reversed(finalised_steps(root)):
        missing = missing_items(root, step)
        reason: str | None = None
        if missing:
            reason = (f"incomplete: no {' and no '.join(missing)} in its Orbax metadata (resuming "
                      "without the optimizer state would not continue the same run)")
        else:
            try:
                probe(step)
            except Exception as exc:  # noqa: BLE001 - any restore failure disqualifies the step
                text = " ".join(str(exc).split()) or type(exc).__name__
                reason = f"does not restore: {type(exc).__name__}: {text[:300].rstrip()}"
        # Several processes probe the same shared step together (the restore is collective)
        # and must take the same branch: a step fails if it failed on any of them.
        reason = _first_failure(step, reason)
        if reason is None:
            return step, removed
        entry = _set_aside_once(root, step, reason)
        removed.append(entry)
        on_set_aside(entry)
    if removed:
        raise CheckpointError(
            f"no checkpoint under {root} restores; each was moved to {Path(root) / CORRUPT_DIR}:\n"
            + "\n".join(f"  step {e.step}: {e.reason}" for e in removed)
            + "\nRe-run to train from the start, or set train.resume_from to another run's "
            "checkpoints.")
    return None, removed


def restore_probe(root: Path | str, model: Any, tx: Any) -> Callable[[int], None]:
    """A probe restoring a step into `model` and a fresh optimizer as Tunix's trainer does on
    construction (harmless: the trainer restores the same step right after, and Orbax reads every
    item before anything is updated)."""

    def probe(step: int) -> None:
        from flax import nnx  # imports jax: see finalised_steps
        from tunix.sft import utils as sft_utils
        from tunix.sft.checkpoint_manager import CheckpointManager

        lora = sft_utils.is_lora_enabled(model)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam if lora else nnx.Param)
        manager = CheckpointManager(str(root))
        try:
            restored, _ = manager.maybe_restore(model, optimizer, step=step,
                                                restore_only_lora_params=lora)
        finally:
            manager.close()
        if restored != step:
            raise CheckpointError(f"Tunix restored step {restored} instead of {step}")

    return probe
