"""The watchdog: names a dead or failed peer process in the run record, then stops this one.

When the coordination service finds a dead process (no heartbeat for `heartbeat_timeout_seconds`)
jax 0.10.2 aborts every survivor from its client thread (LOG(QFATAL): no Python runs, no record),
and its `missed_heartbeat_callback` cannot be used instead (jaxlib 0.10.2 dies with
`std::bad_cast` converting the status, docs/MULTIHOST.md). So each process posts a counter to the
key-value store every second and watches the others'; a peer that reported a failed stage, or
whose counter stood still for a quarter of the heartbeat timeout, is named in the record or log,
and this process exits with PEER_FAILURE_EXIT_CODE. jax's own heartbeat check is the backstop.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kaggle_lib.multihost.env import PEER_FAILURE_EXIT_CODE, PeerProcessError

# A peer whose watchdog counter stands still for heartbeat_timeout / STALE_FRACTION is dead.
STALE_FRACTION = 4
KEY_PREFIX = "kaggle_lib"

# Called (e.g. "record the failure") before the process exits for a dead peer
# (`multihost.on_peer_failure`: one run per process, the latest handler replaces others).
failure_handlers: list[Callable[[PeerProcessError], None]] = []
_failure_lock = threading.Lock()


def exit_after_recording(error: BaseException, handlers: Sequence[Callable[[Any], None]]
                         ) -> NoReturn:
    """Say `error`, let `handlers` record it, then exit: the main thread may be blocked in a
    collective with a dead process (or jax may abort it any moment) and cannot raise."""
    with _failure_lock:
        print(f"\n[kaggle_lib] {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        for handler in list(handlers):
            try:
                handler(error)
            except Exception as exc:  # noqa: BLE001 - never mask the exit
                print(f"[kaggle_lib] could not record the failure: {exc}", file=sys.stderr,
                      flush=True)
        sys.stdout.flush()
        os._exit(PEER_FAILURE_EXIT_CODE)


def try_get(client: Any, key: str) -> str | None:
    try:
        return str(client.key_value_try_get(key))
    except Exception:  # noqa: BLE001 - NOT_FOUND: not posted yet
        return None


class Watchdog(threading.Thread):
    """Posts this process's heartbeat counter every `tick_s`; fails the run when a peer reports a
    failure or its counter stands still for `stale_s` (a quarter of jax's heartbeat timeout: jax
    aborted a killed peer's survivor 6 s after the kill with a 10 s timeout)."""

    def __init__(self, client: Any, me: int, stale_s: float, tick_s: float = 1.0):
        super().__init__(name="kaggle_lib-watchdog", daemon=True)
        self.client, self.me, self.stale_s, self.tick_s = client, me, stale_s, tick_s
        self.stop = threading.Event()

    def _fail(self, message: str, peer: int) -> None:
        exit_after_recording(PeerProcessError(message, [peer]), failure_handlers)

    def run(self) -> None:
        import jax

        client, me, count = self.client, self.me, jax.process_count()
        now = time.monotonic()
        seen: dict[int, tuple[str | None, float]] = {
            p: (None, now) for p in range(count) if p != me}
        beat = 0
        while not self.stop.is_set():
            beat += 1
            try:
                client.key_value_set(f"{KEY_PREFIX}/alive/{me}", str(beat), allow_overwrite=True)
            except Exception as exc:  # noqa: BLE001 - the coordinator is gone
                if self.stop.is_set():
                    return
                self._fail(
                    f"process {me} lost contact with the coordinator (process 0): it died or the "
                    f"network failed ({type(exc).__name__}: {str(exc)[:300]}). Look at process "
                    "0's log for the cause.", 0)
            for peer, (last, since) in list(seen.items()):
                status = try_get(client, f"{KEY_PREFIX}/status/{peer}")
                if status == "done":
                    del seen[peer]
                    continue
                if status:
                    self._fail(f"process {peer} failed ({status}); process {me} stops too. Its "
                               f"log: processes/{peer}/ (or the run record for process 0).", peer)
                value = try_get(client, f"{KEY_PREFIX}/alive/{peer}")
                now = time.monotonic()
                if value != last:
                    seen[peer] = (value, now)
                elif now - since > self.stale_s and not self.stop.is_set():
                    self._fail(
                        f"process {peer} stopped sending heartbeats for {now - since:.0f} s "
                        f"(it died or hung); process {me} stops too. Look at the log of process "
                        f"{peer} for the cause.", peer)
            self.stop.wait(self.tick_s)
