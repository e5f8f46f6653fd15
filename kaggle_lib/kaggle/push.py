"""Push a bundle through the kaggle client library, wait for that version, fetch its outputs.

The `kaggle` CLI exits 0 on a rejected push and on a run ending in ERROR, and `kernels
status`/`output` ask for the latest version, not the one pushed: so this module calls the client
library (kagglesdk requests carrying `version_label`) and checks every response itself.
Every push carries a fresh push id in its bundle info; fetched outputs count as the version's
only when their `evidence/kaggle_bundle.json` carries the same id (else they stay in
`v<N>.unverified/`).
Exit codes: 0 done (also a push answered without a version number: recorded as
QUEUED_UNKNOWN); 1 credentials, push rejected, run ERROR/cancelled, timeout, download failed,
outputs not proven to be the version's; 2 invalid input (metadata, notebook, config, pins,
arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import yaml

from kaggle_lib import auth, logs
from kaggle_lib.compat.kaggle_client import client_authentication, http_session
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.kaggle.bundle import (
    MAX_SENT_BYTES,
    Bundle,
    BundleError,
    BundleOptions,
    build_bundle,
    find_continuation,
)
from kaggle_lib.kaggle.metadata import MetadataError, load_metadata, split_id, validate_metadata

log = logs.get_logger(__name__)

PLACEHOLDER_OWNER = "your-kaggle-username"
TERMINAL_OK = ("COMPLETE",)
TERMINAL_FAILED = ("ERROR", "CANCEL_REQUESTED", "CANCEL_ACKNOWLEDGED")
DEFAULT_TIMEOUT_S = 9.5 * 3600  # a Kaggle session stops at 9 h (TPU); a little slack for queueing
DEFAULT_POLL_S = 30.0
DEFAULT_MAX_POLL_S = 300.0
BACKOFF = 1.5
# kagglesdk sends without a timeout: a stalled status call would hang past --timeout.
STATUS_HTTP_TIMEOUT_S = 60.0
# Output listing and downloads: bounded retries on 429/5xx/connection resets, honouring
# Retry-After up to this many seconds (a multi-hour run must not lose its outputs to one blip).
OUTPUT_RETRIES = 6
MAX_RETRY_AFTER_S = 120.0
OUTPUT_HTTP_TIMEOUT_S = (30.0, 600.0)
RETRY_STATUSES = (429, 500, 502, 503, 504)
# Written by the bundle cell (templates/bundle_cell.py) as the run starts: the bundle info,
# push id included, of the notebook that actually ran.
BUNDLE_INFO_OUTPUT = "evidence/kaggle_bundle.json"
# What a push record keeps when the version is fetched later (--version).
PUSH_FACTS = ("bundle", "url", "pushed_at", "invalid_sources")

NO_CREDENTIALS = (
    "no Kaggle credentials found. Provide one of: KAGGLE_API_TOKEN (a token, or the path of a "
    "file holding it); ~/.kaggle/access_token; KAGGLE_USERNAME and KAGGLE_KEY; or kaggle.json "
    "with username and key in $KAGGLE_CONFIG_DIR or ~/.kaggle (create a token at "
    "https://www.kaggle.com/settings/api). In CI, set them as repository secrets. "
    "See docs/KAGGLE.md."
)


class PushFailure(KaggleLibError, RuntimeError):
    """The push, the run or the download failed (exit code 1)."""


class CredentialsError(PushFailure):
    """No usable Kaggle credentials."""


class WaitTimeout(PushFailure):
    """The version did not finish before the timeout."""


@dataclasses.dataclass
class PushResult:
    kernel_id: str
    version: int | None  # None: the server answered without one (the version may be queued)
    url: str
    # Sources the server could not attach; the version is queued and runs without them.
    invalid_sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StatusResult:
    status: str
    failure_message: str
    waited_s: float
    polls: int
    version_label: str = ""


def version_labels(version: int) -> tuple[str, str]:
    """Version labels to try, preferred first: kaggle-cli issue 1200 / PR 1201 report the
    status API taking `v7` and answering 404 to `7`; kagglesdk documents neither."""
    return f"v{version}", str(version)


def _log(msg: str) -> None:
    log.info(f"[kaggle] {msg}")


class Connection(NamedTuple):
    api: Any  # kaggle.api, authenticated
    credentials: str  # which credentials authenticated, named (never their value)
    warnings: list[str]


def _authenticate(api: Any) -> BaseException | None:
    """`api.authenticate()` as `import kaggle` runs it (on failure it prints help and exits);
    returns what it raised, which the import swallows."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.authenticate()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - returned to the caller
        return exc
    return None


def _drop_refused_token(api: Any, token_source: str, authenticated: bool,
                        method: str | None) -> str:
    """The client skipped (or failed on) an access token that Kaggle refused, but kagglesdk
    still sends one from the environment as a bearer whenever a client is built without a
    token of its own (`KaggleHttpClient._try_fill_auth`), as on the legacy-key path: every
    call would get HTTP 401. KAGGLE_API_TOKEN is removed from this process's environment (the
    client already fell back to the credentials beside it, so the push goes ahead with those);
    a token file cannot be taken out of the environment, so it is refused. Returns the warning."""
    if token_source == "KAGGLE_API_TOKEN":
        os.environ.pop("KAGGLE_API_TOKEN")
        if not authenticated:
            _authenticate(api)  # the other credentials, now that the token is gone
        return ("KAGGLE_API_TOKEN was refused by Kaggle (expired or revoked); it is ignored "
                "for this push (removed from the environment of every client built). Renew it "
                "or delete it (in CI: the KAGGLE_API_TOKEN repository secret)")
    warning = f"the access token in {token_source} was refused by Kaggle (expired or revoked)"
    if method == "OAUTH":  # kagglesdk is given the OAuth token and never reads the file
        return warning
    raise CredentialsError(f"{warning}, and kagglesdk would still send it with every request "
                           f"(HTTP 401) instead of any other credentials. Remove {token_source} "
                           "or replace it with a new token from https://www.kaggle.com/settings/api")


def connect() -> Connection:
    """Check credentials, then import the kaggle client (it authenticates on import; it also
    reads `kaggle auth login` OAuth and $XDG_CONFIG_HOME/kaggle, which kagglehub does not), and
    make every client built afterwards send the credentials that authenticated."""
    expected = auth.kaggle_credentials_source()
    with contextlib.redirect_stdout(io.StringIO()):  # on failure kaggle prints its help text
        import kaggle  # kaggle 2.x catches its own authentication errors on import
    api = kaggle.api
    authenticated, method, config_file = client_authentication(api)
    token_source = auth.kaggle_access_token_source()
    if token_source and not authenticated:
        # The import swallowed why: a refused token (401, or inactive with nothing else to
        # fall back on) is dropped below; Kaggle unreachable or failing is not a refusal.
        error = _authenticate(api)
        if error is not None and not isinstance(error, SystemExit) \
                and _http_status(error) != 401:
            raise CredentialsError(f"could not check the access token from {token_source} with "
                                   f"Kaggle: {_describe_http(error)}")
        authenticated, method, config_file = client_authentication(api)
    warnings: list[str] = []
    if token_source and method != "ACCESS_TOKEN":
        warnings.append(_drop_refused_token(api, token_source, authenticated, method))
        authenticated, method, config_file = client_authentication(api)
    for warning in warnings:
        _log(f"warning: {warning}")
    if not authenticated:
        if expected is None:
            raise CredentialsError(NO_CREDENTIALS)
        raise CredentialsError(f"the kaggle client could not authenticate with the credentials "
                               f"from {expected} (refused, malformed, or Kaggle unreachable)")
    source = auth.kaggle_authenticated_source(method, config_file)
    _log(f"authenticated with credentials from {source}")
    return Connection(api, source, warnings)


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(exc: BaseException) -> bool:
    import requests

    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    status = _http_status(exc)
    return status is not None and (status >= 500 or status == 429)


def _retry_policy(retries: int) -> Any:
    """urllib3 Retry: 429/5xx and connection resets, Retry-After honoured up to a cap."""
    from urllib3.util.retry import Retry

    class BoundedRetry(Retry):
        RETRY_AFTER_STATUS_CODES = frozenset(RETRY_STATUSES)  # urllib3's default: 413/429/503

        def get_retry_after(self, response: Any) -> float | None:
            after = super().get_retry_after(response)
            return None if after is None else min(after, MAX_RETRY_AFTER_S)

    return BoundedRetry(total=retries, connect=retries, read=retries, status=retries,
                        backoff_factor=0.5, backoff_max=30.0, status_forcelist=RETRY_STATUSES,
                        allowed_methods=None,  # the POSTs we retry only read (status, listing)
                        respect_retry_after_header=True, raise_on_status=False)


def _mount(session: Any, timeout: Any, retries: int) -> None:
    """Mount an adapter that adds a timeout to requests sent without one, and retries."""
    import requests

    class Adapter(requests.adapters.HTTPAdapter):
        def send(self, request: Any, **kwargs: Any) -> Any:
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super().send(request, **kwargs)

    adapter = Adapter(max_retries=_retry_policy(retries) if retries else 0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)


@contextlib.contextmanager
def kaggle_client(api: Any, *, timeout: Any, retries: int = 0) -> Any:
    """`api.build_kaggle_client()` whose requests carry a timeout (and optional retries):
    kagglesdk's KaggleHttpClient calls `session.send` without one."""
    with api.build_kaggle_client() as client:
        _mount(http_session(client), timeout, retries)
        yield client


def _describe_http(exc: BaseException) -> str:
    status = _http_status(exc)
    if status in (401, 403):
        return f"HTTP {status}: Kaggle refused the credentials or the kernel is not yours ({exc})"
    return f"HTTP {status}: {exc}" if status else str(exc)


def push_bundle(api: Any, bundle_dir: Path, kernel_id: str) -> PushResult:
    """Push one new version; every server-side rejection becomes a PushFailure."""
    import requests

    try:
        response = api.kernels_push(str(bundle_dir))
    except requests.RequestException as exc:
        raise PushFailure(f"push of {kernel_id} failed: {_describe_http(exc)}") from None
    except ValueError as exc:  # the client's own metadata checks
        raise PushFailure(f"the kaggle client refused {bundle_dir}: {exc}") from None
    if response is None:
        raise PushFailure(f"push of {kernel_id}: the server returned no response")
    if response.error:
        hint = ""
        if split_id(kernel_id)[0] == PLACEHOLDER_OWNER:
            hint = " (the id still has the placeholder owner: pass --owner or set KAGGLE_USERNAME)"
        raise PushFailure(f"Kaggle rejected the push of {kernel_id}: {response.error}{hint}")
    invalid = {f"{kind}_sources": list(getattr(response, f"invalid_{kind}_sources") or [])
               for kind in ("model", "dataset", "kernel", "competition")}
    invalid = {k: v for k, v in invalid.items() if v}
    if response.invalid_tags:
        _log(f"warning: keywords not accepted by Kaggle: {list(response.invalid_tags)}")
    # The server creates and queues the version anyway (kaggle-cli prints these as warnings),
    # so the caller reports and records it instead of abandoning a run that spends TPU quota.
    return PushResult(kernel_id=kernel_id, url=response.url or "", invalid_sources=invalid,
                      version=int(response.version_number) if response.version_number else None)


def _request(request: Any, owner: str, slug: str, label: str) -> Any:
    """A kagglesdk request (its classes take no constructor arguments) for one version."""
    request.user_name, request.kernel_slug, request.version_label = owner, slug, label
    return request


def get_status(api: Any, owner: str, slug: str, label: str,
               http_timeout: float = STATUS_HTTP_TIMEOUT_S) -> tuple[str, str]:
    """(status name, failure message) of the version `label` (not the latest)."""
    from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusRequest

    request = _request(ApiGetKernelSessionStatusRequest(), owner, slug, label)
    # No retries here: wait_for_version retries within the deadline.
    with kaggle_client(api, timeout=http_timeout) as client:
        response = client.kernels.kernels_api_client.get_kernel_session_status(request)
    status = response.status
    return getattr(status, "name", str(status)), response.failure_message or ""


def wait_for_version(fetch_status: Callable[[str, float], tuple[str, str]], *, label: str,
                     timeout_s: float, version_labels: tuple[str, ...],
                     poll_s: float = DEFAULT_POLL_S, max_poll_s: float = DEFAULT_MAX_POLL_S,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> StatusResult:
    """Poll `fetch_status(label, http_timeout)` until a terminal status; a 404 tries the next
    form in `version_labels`, transient errors retry until the deadline, others end the wait."""
    start = clock()
    deadline, delay, polls, form, last = start + timeout_s, poll_s, 0, 0, "UNKNOWN"
    found: str | None = None
    not_found: set[str] = set()
    while True:
        polls += 1
        current = found if found is not None else version_labels[form % len(version_labels)]
        http_timeout = max(0.5, min(STATUS_HTTP_TIMEOUT_S, deadline - clock()))
        try:
            status, failure = fetch_status(current, http_timeout)
        except Exception as exc:  # noqa: BLE001 - classified below
            code = _http_status(exc)
            if code == 404 and found is None:
                not_found.add(current)
                form += 1
                _log(f"{label}: version label {current!r} not found (HTTP 404), retrying")
            elif _is_transient(exc):
                _log(f"{label}: transient error while polling ({_describe_http(exc)}), retrying")
            else:
                raise PushFailure(
                    f"{label}: status request failed: {_describe_http(exc)}") from None
        else:
            if found is None:
                found = current
                not_found.clear()
            if status != last:
                _log(f"{label}: {status} after {clock() - start:.0f} s")
            last = status
            if status in TERMINAL_OK or status in TERMINAL_FAILED:
                return StatusResult(status, failure, clock() - start, polls, found)
        remaining = deadline - clock()
        if remaining <= 0:
            if found is None and not_found >= set(version_labels):
                tried = " and ".join(repr(v) for v in version_labels)
                raise WaitTimeout(f"{label} not found: the status API answered HTTP 404 for "
                                  f"version labels {tried} until --timeout ({timeout_s:g} s)")
            raise WaitTimeout(f"{label} is still {last} after {timeout_s:g} s (--timeout); it "
                              "keeps running on Kaggle. Fetch it later with --version")
        sleep(min(delay, remaining))
        delay = min(delay * BACKOFF, max_poll_s)


def _safe_target(dest: Path, name: str) -> Path:
    """Output names come from the server: refuse anything that would leave `dest`."""
    rel = PurePosixPath(name.replace("\\", "/"))
    if not name or rel.is_absolute() or ".." in rel.parts:
        raise PushFailure(f"refusing output file name {name!r}: not a relative path inside the "
                          "output folder")
    target = dest.joinpath(*rel.parts)
    if not target.resolve().is_relative_to(dest.resolve()):
        raise PushFailure(f"refusing output file name {name!r}: it leaves {dest}")
    return target


def fetch_outputs(api: Any, owner: str, slug: str, version: int, dest: Path,
                  labels: tuple[str, ...]) -> list[str]:
    """Download every output file of one version (and its log) into dest; return names."""
    import requests
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    dest.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    token: str | None = None
    first, form = True, 0
    with requests.Session() as session:
        _mount(session, OUTPUT_HTTP_TIMEOUT_S, OUTPUT_RETRIES)
        while True:
            request = _request(ApiListKernelSessionOutputRequest(), owner, slug, labels[form])
            request.page_size = 100
            if token:
                request.page_token = token
            try:
                with kaggle_client(api, timeout=OUTPUT_HTTP_TIMEOUT_S,
                                   retries=OUTPUT_RETRIES) as client:
                    response = client.kernels.kernels_api_client.list_kernel_session_output(request)
            except requests.RequestException as exc:
                if _http_status(exc) == 404 and first and form + 1 < len(labels):
                    form += 1
                    continue
                raise PushFailure(f"listing outputs of {owner}/{slug} v{version} failed: "
                                  f"{_describe_http(exc)}") from None
            for item in response.files or []:
                target = _safe_target(dest, item.file_name or "")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:  # pre-signed URLs: no Kaggle credentials go with this request
                    with session.get(item.url, stream=True) as got:
                        got.raise_for_status()
                        with open(target, "wb") as fh:
                            for chunk in got.iter_content(chunk_size=1 << 20):
                                fh.write(chunk)
                except requests.RequestException as exc:
                    raise PushFailure(f"downloading output {item.file_name!r} failed: "
                                      f"{_describe_http(exc)}") from None
                names.append(item.file_name)
            if first and response.log:
                (dest / f"{slug}.log").write_text(response.log, encoding="utf-8")
                names.append(f"{slug}.log")
            first = False
            token = response.next_page_token or None
            if not token:
                return names


def _parse_set(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BundleError(f"--set {item!r}: expected KEY=VALUE, e.g. train.sft.max_steps=3")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _write_record(dest: Path, record: dict[str, Any]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "push.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


def run_push(args: argparse.Namespace) -> int:
    """The push command; returns the exit code."""
    try:
        return _run(args)
    except (MetadataError, BundleError) as exc:
        log.error(f"kaggle_push: invalid input: {exc}")
        return 2
    except PushFailure as exc:
        log.error(f"kaggle_push: error: {exc}")
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.timeout <= 0 or args.poll_interval <= 0 or args.max_poll_interval <= 0:
        raise BundleError("--timeout, --poll-interval and --max-poll-interval must be positive")
    if args.push_id and args.version is None:
        raise BundleError("--push-id goes with --version (a new push makes its own push id)")
    owner = args.owner or os.environ.get("KAGGLE_USERNAME") or None
    bundle: Bundle | None = None
    if args.version is None:
        bundle = build_bundle(BundleOptions(
            path=args.path, out_dir=args.out, config=args.config,
            overrides=_parse_set(args.overrides), run_name=args.run_name, owner=owner,
            skip_install=args.skip_install, stack=args.stack, repo_root=args.repo_root,
            continue_from=(find_continuation(args.continue_from, args.evidence_dir)
                           if args.continue_from else None)))
        for warning in bundle.warnings:
            _log(f"warning: {warning}")
        info = bundle.info
        _log(f"bundle {bundle.dir}: {bundle.kernel_id}, commit {info['git']['sha']}"
             f"{' (dirty)' if info['git'].get('dirty') else ''}, config {info['config']}, "
             f"package zip {info['zip_bytes'] / 1024:.0f} KiB")
        _log(f"notebook as sent: {info['sent_bytes']:,} bytes (limit {MAX_SENT_BYTES:,}; Kaggle "
             "refuses a kernel source of 1 MB or more)")
        kernel_id = bundle.kernel_id
    else:
        meta = load_metadata(args.path)
        if owner:
            meta["id"] = f"{owner}/{split_id(str(meta.get('id', '')))[1]}"
        validate_metadata(meta, source=str(Path(args.path) / "kernel-metadata.json"))
        kernel_id = str(meta["id"])
    kernel_owner, slug = split_id(kernel_id)
    if args.dry_run:
        if kernel_owner == PLACEHOLDER_OWNER:
            _log(f"warning: the id has the placeholder owner {PLACEHOLDER_OWNER!r}; a real push "
                 "needs --owner or KAGGLE_USERNAME")
        _log("dry run: metadata, notebook, config and pins are valid; nothing was pushed")
        return 0
    if kernel_owner == PLACEHOLDER_OWNER:
        raise BundleError(f"kernel id {kernel_id!r} has the placeholder owner; pass --owner "
                          "or set KAGGLE_USERNAME to your Kaggle username")

    connection = connect()
    api = connection.api
    record: dict[str, Any] = {"kernel_id": kernel_id, "bundle": bundle.info if bundle else None,
                              "credentials": connection.credentials}
    warnings = list(connection.warnings)
    if bundle is not None:
        push_id = bundle.info["push_id"]
        result = push_bundle(api, bundle.dir, kernel_id)
        record.update(version=result.version, url=result.url, pushed_at=time.time())
        if result.invalid_sources:
            record["invalid_sources"] = result.invalid_sources
            _log(f"warning: version {result.version} is queued without {result.invalid_sources}: "
                 "Kaggle could not attach them. For Gemma models accept the licence on the "
                 "model's Kaggle page with the pushing account and check the versions exist; "
                 f"cancel the run on {result.url or 'kaggle.com'} if it cannot work without them")
        if result.version is None:
            # kaggle-cli's `kernels_push_cli` prints "Kernel version successfully pushed" for
            # this answer: the version is queued, but cannot be followed without its number.
            warnings.append(f"the server returned no version number for the push of {kernel_id}; "
                            "the version is probably queued (the kaggle CLI reports success). "
                            f"Find its number on {result.url or 'kaggle.com'} and fetch it with "
                            f"--version N --push-id {push_id}")
            _log(f"warning: {warnings[-1]}")
            _write_record(args.evidence_dir / slug / f"queued-{push_id}",
                          dict(record, status="QUEUED_UNKNOWN", warnings=warnings))
            return 0
        _log(f"pushed {kernel_id} version {result.version}: {result.url} (push id {push_id})")
        version = result.version
    else:
        version = int(args.version)
        # Keep what the push recorded for this version (bundle and push id, url).
        pushed = _read_record(args.evidence_dir / slug / f"v{version}")
        record.update(version=version, url=None)
        record.update({key: pushed[key] for key in PUSH_FACTS if pushed.get(key) is not None})
    if warnings:
        record["warnings"] = warnings
    dest = args.evidence_dir / slug / f"v{version}"
    if not args.wait:
        _write_record(dest, dict(record, status="PUSHED"))
        _log(f"not waiting; follow it with --version {version} --wait")
        return 0

    label = f"{kernel_id} v{version}"
    expected = _expected_push_id(args.push_id, record, dest)
    if expected[0] is None:
        _log(f"warning: {label} has no push id ({expected[1]}): its outputs cannot be proven to "
             f"be this version's and will be kept aside in {_unverified(dest)}")
    try:
        status = wait_for_version(
            lambda form, http_timeout: get_status(api, kernel_owner, slug, form, http_timeout),
            label=label, timeout_s=args.timeout, version_labels=version_labels(version),
            poll_s=args.poll_interval, max_poll_s=args.max_poll_interval)
    except WaitTimeout:
        _write_record(dest, dict(record, status="TIMEOUT"))
        raise
    record.update(status=status.status, failure_message=status.failure_message,
                  waited_s=round(status.waited_s, 1), polls=status.polls,
                  version_label=status.version_label)
    labels = (status.version_label, *[v for v in version_labels(version)
                                      if v != status.version_label])
    problem = _fetch_verified(api, record, dest, labels, expected)
    if status.status not in TERMINAL_OK:
        what = "was cancelled" if status.status.startswith("CANCEL") else "failed"
        where = f"kept aside in {_unverified(dest)} ({problem})" if problem else f"in {dest}"
        raise PushFailure(f"{label} {what} ({status.status}): "
                          f"{status.failure_message or 'no failure message'}; "
                          f"log and outputs {where}")
    if problem:
        raise PushFailure(f"{label}: {problem}")
    _log(f"{label} COMPLETE; {len(record['files'])} file(s) in {dest}, push id "
         f"{expected[0]} confirmed by the outputs' {BUNDLE_INFO_OUTPUT}")
    return 0


def _read_record(dest: Path) -> dict[str, Any]:
    path = dest / "push.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); move it away to fetch again") from None


def _unverified(dest: Path) -> Path:
    return dest.with_name(dest.name + ".unverified")


def _expected_push_id(flag: str | None, record: dict[str, Any],
                      dest: Path) -> tuple[str | None, str]:
    """(the push id this version was pushed with, a phrase saying where that comes from)."""
    if flag:
        return flag, f"--push-id is {flag!r}"
    path = dest / "push.json"
    recorded = (record.get("bundle") or {}).get("push_id")
    if recorded:
        return recorded, f"the push record {path} has push_id {recorded!r}"
    held = "has no push_id" if path.is_file() else "does not exist"
    return None, f"the push record {path} {held} and no --push-id was given"


def outputs_push_id_problem(outputs: Path, expected: tuple[str | None, str]) -> str | None:
    """None when the outputs' bundle info (written by the bundle cell as the run starts) names
    the push id this version was pushed with; else the mismatch, naming both values."""
    path = outputs / BUNDLE_INFO_OUTPUT
    try:
        info = json.loads(path.read_text())
        found = info.get("push_id") if isinstance(info, dict) else None
        seen = f"has push_id {found!r}" if found else "has no push_id"
    except FileNotFoundError:
        found, seen = None, "is missing"
    except (OSError, ValueError):
        found, seen = None, "is not readable JSON"
    if expected[0] and found == expected[0]:
        return None
    return (f"the outputs are not proven to be this version's: {BUNDLE_INFO_OUTPUT} in the "
            f"outputs {seen}; {expected[1]}")


def _fetch_verified(api: Any, record: dict[str, Any], dest: Path, labels: tuple[str, ...],
                    expected: tuple[str | None, str]) -> str | None:
    """Download the outputs into <dest>.unverified/, move them into dest only when they carry
    this version's push id, and write push.json; return why they stay aside, if they do.
    A failed download raises PushFailure (unless the run failed: its message matters more)."""
    owner, slug = split_id(record["kernel_id"])
    staging = _unverified(dest)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record["files"] = fetch_outputs(api, owner, slug, record["version"], staging, labels)
    except PushFailure as exc:
        record.update(files=[], fetch_error=str(exc), outputs_unverified=str(staging))
        _write_record(dest, record)
        if record["status"] in TERMINAL_OK:
            raise
        return str(exc)
    problem = outputs_push_id_problem(staging, expected)
    if problem:
        record.update(outputs_unverified=str(staging), verification_error=problem)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        for item in staging.iterdir():
            target = dest / item.name
            if target.is_dir():
                shutil.rmtree(target)
            item.replace(target)
        staging.rmdir()
        record["outputs_push_id"] = expected[0]
    _write_record(dest, record)
    return problem
