"""The one loopback HTTP server every fake in tests/ runs on.

127.0.0.1 on a free port, served from a daemon thread. It stops itself after
`max_lifetime_s`, so a test that hangs or forgets to stop it cannot leak a server.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    """`handler` served on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], max_lifetime_s: float = 120.0,
                 on_stop: Callable[[], None] | None = None) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(max_lifetime_s, self.stop)
        self._timer.daemon = True
        self._on_stop = on_stop  # e.g. release handlers that stall on purpose
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        """Idempotent: the lifetime timer and the test may both call it."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self._on_stop is not None:
            self._on_stop()
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler],
                    max_lifetime_s: float = 120.0) -> Iterator[str]:
    """Serve `handler` on 127.0.0.1 for the `with` block; yields the base URL."""
    with LoopbackServer(handler, max_lifetime_s) as server:
        yield server.url
