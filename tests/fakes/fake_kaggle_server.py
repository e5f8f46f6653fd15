"""A fake Kaggle API (and Kaggle-notebook secrets endpoint) on 127.0.0.1 for tests.

The real kaggle client talks to it unchanged: with `KAGGLE_API_ENVIRONMENT=LOCALHOST` it
calls `http://localhost/api/v1/<Service>/<Method>`, and `HTTP_PROXY` pointing here makes this
server receive those requests (proxy form: the request line carries the absolute URL).
The server stops by itself after `max_lifetime_s` and refuses work after `max_requests`.

Where it is pessimistic, and why (docs/KAGGLE.md, "Facts the code relies on"):
- version labels: the status and output endpoints answer 404 to a bare `7` and serve `v7`
  (live probes in kaggle-cli issue 1200 / PR 1201); `Scenario.label_form="bare"` flips it.
- a kernel source (the notebook text) of 1 MB or more gets HTTP 400 "The kernel source must
  be less than 1 megabytes in size" (users' reports).
- invalid model/dataset sources still create and queue the version (kaggle-cli prints them
  as warnings in `kernels_push`).
- listing and downloads can fail transiently (429 with Retry-After, 503, connection reset);
  a status call can stall without answering (kagglesdk sends without a timeout).
- the secrets endpoint answers like Kaggle's: `wasSuccessful: false` for a label that is not
  attached (kaggle_secrets raises BackendError), 401 for a bad JWE (CredentialError).
- credentials: Basic auth with the legacy key, or a bearer that must be `api_token`; any other
  bearer (an expired or revoked token) gets 401 "Unauthenticated". `IntrospectToken` answers
  `active: false` for such a token, so kaggle 2.2.4's `authenticate` falls back to the legacy
  key (auth_method LEGACY_API_KEY) while kagglesdk keeps sending the token from the environment
  (`KaggleHttpClient._try_fill_auth`): every later call gets 401. With
  `introspect_refuses_bad_bearer` the introspection request itself, which carries the same
  bearer, gets 401 and `import kaggle` ends unauthenticated (its `_introspect_token` re-raises
  401). Which of the two the real service does is not known; both are tested.
- a run writes the pushed notebook's bundle info to `evidence/kaggle_bundle.json`, as the bundle
  cell does (`runs_pushed_bundle`); a push can be answered without a version number.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from tests.fakes.loopback import LoopbackServer

KERNELS = "/api/v1/kernels.KernelsApiService/"


@dataclasses.dataclass
class Scenario:
    """What the fake Kaggle answers. Statuses are served in order; the last one repeats."""

    username: str = "tester"
    key: str = "fake-kaggle-key-0123456789"
    api_token: str = "KGAT_fakevalidtoken0123456789abcdef"
    introspect_refuses_bad_bearer: bool = False
    version: int = 3
    statuses: list[Any] = dataclasses.field(
        default_factory=lambda: ["QUEUED", "RUNNING", "COMPLETE"])
    # What a status request for any other version (or none) gets: the previous run.
    previous_status: str = "COMPLETE"
    push_error: str | None = None
    push_without_version: bool = False  # SaveKernel answers with no versionNumber
    # The version's run writes the pushed notebook's bundle info (push id included) to
    # evidence/kaggle_bundle.json; False: the outputs are exactly `outputs` (e.g. another
    # version's, as when the server ignores the version label).
    runs_pushed_bundle: bool = True
    push_http_status: int | None = None
    invalid_model_sources: list[str] = dataclasses.field(default_factory=list)
    outputs: dict[str, bytes] = dataclasses.field(default_factory=dict)
    log: str = '[{"stream_name":"stdout","time":1.0,"data":"hello from the fake kernel\\n"}]'
    page_size_cap: int = 2  # forces paging of outputs
    secrets: dict[str, str] = dataclasses.field(default_factory=dict)
    secrets_token: str = "fake-jwe-token"
    # "v": serve `v<N>`, 404 for `<N>` (what live probes report); "bare": the other way round;
    # "neither": 404 for both.
    label_form: str = "v"
    max_source_bytes: int = 1_000_000
    status_hangs: bool = False  # status calls never answer
    # Injected failures, consumed in order: {"ListKernelSessionOutput" | "IntrospectToken" |
    # "download": [429, 503, "reset", ...]}. 429/503 carry `Retry-After: retry_after`.
    failures: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    retry_after: str = "1"


class FakeKaggleServer:
    """Threaded fake; use as a context manager. `calls` records (method, path, body, auth)."""

    def __init__(self, scenario: Scenario | None = None, max_lifetime_s: float = 120.0,
                 max_requests: int = 400) -> None:
        self.scenario = scenario or Scenario()
        self.max_requests = max_requests
        self.calls: list[dict[str, Any]] = []
        self.pushed: list[dict[str, Any]] = []
        self._status_index = 0
        self._lock = threading.Lock()
        self._released = threading.Event()  # ends stalled handlers on stop
        self._loopback = LoopbackServer(self._handler_class(), max_lifetime_s,
                                        on_stop=self._released.set)

    # -- lifecycle
    @property
    def url(self) -> str:
        return self._loopback.url

    def start(self) -> FakeKaggleServer:
        self._loopback.start()
        return self

    def stop(self) -> None:
        self._loopback.stop()

    def __enter__(self) -> FakeKaggleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client_env(self) -> dict[str, str]:
        """Environment that routes the real kaggle client here."""
        return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": self.url,
                "http_proxy": self.url, "NO_PROXY": "", "no_proxy": ""}

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["path"].endswith("/" + method)]

    # -- behaviour
    def _label_status(self, version_label: str | None) -> str:
        """'ok' for this version in the accepted form, 'missing' (404) for the other form of
        it, 'other' for any other version."""
        sc = self.scenario
        served, refused = f"v{sc.version}", str(sc.version)
        if sc.label_form == "neither":  # the version does not exist under any label
            return "missing" if version_label in (served, refused) else "other"
        if sc.label_form == "bare":
            served, refused = refused, served
        if version_label == served:
            return "ok"
        return "missing" if version_label == refused else "other"

    def take_failure(self, where: str) -> Any:
        with self._lock:
            queue = self.scenario.failures.get(where) or []
            return queue.pop(0) if queue else None

    def _next_status(self, version_label: str | None) -> dict[str, Any]:
        sc = self.scenario
        if self._label_status(version_label) != "ok":
            return {"status": sc.previous_status}
        with self._lock:
            item = sc.statuses[min(self._status_index, len(sc.statuses) - 1)]
            self._status_index += 1
        if isinstance(item, tuple):
            return {"status": item[0], "failureMessage": item[1]}
        return {"status": item}

    def _authorized(self, headers: Any) -> bool:
        auth = headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            return user == self.scenario.username and key == self.scenario.key
        return auth == f"Bearer {self.scenario.api_token}"

    def _run_writes_bundle_info(self, notebook_text: str) -> None:
        """What the pushed bundle cell writes as the run starts: its `_KL_BUNDLE`."""
        cells = json.loads(notebook_text or "{}").get("cells", [])
        source = next((c["source"] for c in cells
                       if "kaggle-bundle" in c.get("metadata", {}).get("tags", [])), None)
        if source is None:
            return
        info = next(ast.literal_eval(node.value) for node in ast.parse(source).body
                    if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", None) == "_KL_BUNDLE")
        self.scenario.outputs = {**self.scenario.outputs,
                                 "evidence/kaggle_bundle.json": json.dumps(info).encode()}

    def _api(self, method: str, body: dict[str, Any], headers: Any) -> tuple[int, dict[str, Any]]:
        sc = self.scenario
        if method == "security.OAuthService/IntrospectToken":
            bearer = (headers.get("Authorization") or "").startswith("Bearer ")
            if bearer and sc.introspect_refuses_bad_bearer and not self._authorized(headers):
                return 401, {"code": 401, "message": "Unauthenticated"}
            ok = body.get("token") == sc.api_token
            return 200, {"active": ok, "username": sc.username if ok else ""}
        if not self._authorized(headers):
            return 401, {"code": 401, "message": "Unauthenticated"}
        if method == "kernels.KernelsApiService/SaveKernel":
            self.pushed.append(body)
            if sc.push_http_status:
                return sc.push_http_status, {"code": sc.push_http_status,
                                             "message": "fake server failure"}
            if len(str(body.get("text", "")).encode()) >= sc.max_source_bytes:
                return 400, {"code": 400, "message": "The kernel source must be less than 1 "
                             "megabytes in size"}
            if sc.push_error:
                return 200, {"error": sc.push_error}
            if sc.runs_pushed_bundle:
                self._run_writes_bundle_info(str(body.get("text", "")))
            slug = body.get("slug", "")
            answer = {"ref": f"/code/{slug}", "url": f"https://www.kaggle.com/code/{slug}",
                      "versionNumber": sc.version, "kernelId": 42,
                      "invalidModelSources": sc.invalid_model_sources}
            if sc.push_without_version:
                del answer["versionNumber"]
            return 200, answer
        if method == "kernels.KernelsApiService/GetKernelSessionStatus":
            if self._label_status(body.get("versionLabel")) == "missing":
                return 404, {"code": 404, "message": "Not found"}
            return 200, self._next_status(body.get("versionLabel"))
        if method == "kernels.KernelsApiService/ListKernelSessionOutput":
            label = self._label_status(body.get("versionLabel"))
            if label == "missing":
                return 404, {"code": 404, "message": "Not found"}
            if label == "other":
                return 200, {"files": [], "log": "log of another version"}
            names = sorted(sc.outputs)
            start = int(body.get("pageToken") or 0)
            size = min(int(body.get("pageSize") or 20), sc.page_size_cap)
            page = names[start:start + size]
            files = [{"fileName": n, "url": f"http://localhost/files/v{sc.version}/{quote(n)}"}
                     for n in page]
            out: dict[str, Any] = {"files": files}
            if start == 0:
                out["log"] = sc.log
            if start + size < len(names):
                out["nextPageToken"] = str(start + size)
            return 200, out
        return 404, {"code": 404, "message": f"fake server has no method {method}"}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, code: int, payload: bytes, ctype: str) -> None:
                self.send_response(code)
                if code in (429, 503):
                    self.send_header("Retry-After", fake.scenario.retry_after)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _json(self, code: int, obj: dict[str, Any]) -> None:
                self._send(code, json.dumps(obj).encode(), "application/json")

            def _record(self, body: Any) -> bool:
                with fake._lock:
                    fake.calls.append({"method": self.command,
                                       "path": urlsplit(self.path).path, "body": body,
                                       "auth": bool(self.headers.get("Authorization")),
                                       "auth_scheme": (self.headers.get("Authorization")
                                                       or " ").split(" ")[0],
                                       "time": time.monotonic()})
                    return len(fake.calls) <= fake.max_requests

            def _fail(self, where: str) -> bool:
                """Serve an injected failure for `where`, if one is queued."""
                failure = fake.take_failure(where)
                if failure is None:
                    return False
                if failure == "reset":  # close without an answer, like a dropped connection
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return True
                self._json(int(failure), {"code": int(failure), "message": "fake failure"})
                return True

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_raw": raw.decode(errors="replace")}
                if not self._record(body):
                    return self._json(503, {"code": 503, "message": "request budget spent"})
                path = urlsplit(self.path).path
                if path == "/requests/GetUserSecretByLabelRequest":
                    return self._secret(body)
                method = path.rsplit("/", 1)[-1]
                if method == "GetKernelSessionStatus" and fake.scenario.status_hangs:
                    fake._released.wait()  # never answers while the test runs
                    return None
                if method in ("ListKernelSessionOutput", "IntrospectToken") \
                        and self._fail(method):
                    return None
                if path.startswith("/api/v1/"):
                    code, payload = fake._api(path[len("/api/v1/"):], body, self.headers)
                    return self._json(code, payload)
                return self._json(404, {"code": 404, "message": f"no route {path}"})

            def do_GET(self) -> None:  # noqa: N802
                if not self._record(None):
                    return self._json(503, {"code": 503, "message": "request budget spent"})
                path = urlsplit(self.path).path
                if self._fail("download"):
                    return None
                prefix = f"/files/v{fake.scenario.version}/"
                name = unquote(path[len(prefix):]) if path.startswith(prefix) else None
                if name is None or name not in fake.scenario.outputs:
                    return self._json(404, {"code": 404, "message": f"no file {path}"})
                return self._send(200, fake.scenario.outputs[name], "application/octet-stream")

            def _secret(self, body: dict[str, Any]) -> None:
                # Kaggle's secrets service: JWE from KAGGLE_USER_SECRETS_TOKEN, a label.
                sc = fake.scenario
                if body.get("JWE") != sc.secrets_token:
                    return self._json(401, {"wasSuccessful": False, "errors": ["bad JWE"]})
                label = body.get("Label")
                if label not in sc.secrets:
                    return self._json(200, {"wasSuccessful": False,
                                            "errors": [f"No user secrets exist for label {label}"]})
                return self._json(200, {"wasSuccessful": True,
                                        "result": {"secret": sc.secrets[label]}})

        return Handler


# ---------------------------------------------------------------------------- stand-ins

STANDIN_PARAMETERS = (
    'config_path = "configs/cpu_gemma3_270m.yaml"\n'
    "overrides = {}\n"
    'run_name = ""\n'
    'run_dir = ""'
)


def standin_notebook(extra_cells: list[str] | None = None) -> dict[str, Any]:
    """A small notebook shaped like notebooks/submission.ipynb (parameters cell, kl cells)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Stand-in submission"),
        nbformat.v4.new_code_cell(STANDIN_PARAMETERS, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import json, os\nimport kaggle_lib as kl\nfrom pathlib import Path\n"
            "from kaggle_lib.runtime import detect_environment\n"
            "out = Path(detect_environment().working_dir) / 'standin.json'\n"
            "out.write_text(json.dumps({'config_path': config_path, 'overrides': overrides,\n"
            "    'run_name': run_name, 'kl_file': kl.__file__,\n"
            "    'sha': os.environ.get('KAGGLE_LIB_GIT_SHA')}))"),
    ]
    for src in extra_cells or []:
        nb.cells.append(nbformat.v4.new_code_cell(src))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    return nb


def standin_metadata(**changes: Any) -> dict[str, Any]:
    meta = {
        "id": "tester/gemma-tunix-reasoning",
        "title": "Gemma Tunix Reasoning",
        "code_file": "notebooks/submission.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": False,
        "enable_tpu": True,
        "machine_shape": "TpuV5E8",
        "enable_internet": True,
        "docker_image_pinning_type": "original",
        "dataset_sources": [],
        "model_sources": ["google/gemma-3/flax/gemma3-1b-it/1"],
    }
    meta.update(changes)
    return {k: v for k, v in meta.items() if v is not None}


def make_standin_repo(root: Any, real_repo: Any, metadata: dict[str, Any] | None = None,
                      notebook: dict[str, Any] | None = None) -> Any:
    """A throwaway repository: the real kaggle_lib and pins, stand-in configs and notebook."""
    import shutil
    from pathlib import Path

    import nbformat

    root, real_repo = Path(root), Path(real_repo)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(real_repo / "kaggle_lib", root / "kaggle_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "requirements.lock", "requirements-kaggle.txt"):
        shutil.copy(real_repo / name, root / name)
    (root / "configs").mkdir()
    (root / "configs" / "tpu_standin.yaml").write_text(
        "run_name: standin\ndevice: tpu\nmodel:\n  name: gemma3-1b-it\n  source: kaggle\n")
    (root / "configs" / "cpu_standin.yaml").write_text(
        "run_name: standin\ndevice: cpu\nmodel:\n  name: gemma3-270m\n")
    (root / "notebooks").mkdir()
    nbformat.write(nbformat.from_dict(notebook or standin_notebook()),
                   str(root / "notebooks" / "submission.ipynb"))
    (root / "kernel-metadata.json").write_text(json.dumps(metadata or standin_metadata(), indent=2))
    return root
