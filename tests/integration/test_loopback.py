"""The shared loopback server: reachable while open, gone after, and stops on its own."""

from __future__ import annotations

import time
import urllib.request
from http.server import BaseHTTPRequestHandler

import pytest

from tests.fakes.loopback import LoopbackServer, loopback_server


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read()


def test_serves_on_loopback_until_the_block_ends() -> None:
    with loopback_server(_Hello) as url:
        assert url.startswith("http://127.0.0.1:")
        assert _get(url + "/ping") == b"/ping"
    with pytest.raises(OSError):
        _get(url + "/ping")


def test_stops_by_itself_after_its_lifetime() -> None:
    stopped: list[bool] = []
    server = LoopbackServer(_Hello, max_lifetime_s=0.2, on_stop=lambda: stopped.append(True))
    server.start()
    deadline = time.monotonic() + 10
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stopped == [True]
    server.stop()  # a second stop is harmless and does not call on_stop again
    assert stopped == [True]
    with pytest.raises(OSError):
        _get(server.url + "/x")
