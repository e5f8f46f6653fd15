"""Credentials through their own libraries, and redaction of every secret.

Hugging Face token: huggingface_hub's lookup, else on Kaggle the secret labelled `HF_TOKEN`.
Kaggle credentials: kagglehub's lookup before the kaggle client authenticates, then the
client's own `auth_method`; named, never read out. Values are registered for redaction the
moment they are read; never printed, logged, written to evidence or passed to papermill.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from kaggle_lib.errors import KaggleLibError

HF_SECRET_LABEL = "HF_TOKEN"
# The one list of environment variables whose values are secrets wherever they appear: refused
# as notebook parameters (`python -m kaggle_lib run`), registered for redaction in the kernel
# (`register_environment_secrets`) and searched for by the closing scan (`report`).
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAGGLE_KEY", "KAGGLE_API_TOKEN",
                   "WANDB_API_KEY")

# Token shapes redacted even when the value was never registered (e.g. pasted into a config).
# Kaggle legacy keys are 32 hex characters; hex digests of that length are common in evidence
# (hashes), so those are redacted by value only, not by shape.
TOKEN_PATTERNS = (
    re.compile(r"hf_[A-Za-z0-9]{30,}"),  # Hugging Face user access tokens
    re.compile(r"KGAT_[A-Za-z0-9]{16,}"),  # Kaggle API tokens
)
REDACTED = "[REDACTED]"

_secret_values: set[str] = set()


class AuthError(KaggleLibError, RuntimeError):
    """A gated model needs a token that is missing or was refused."""

    hint = (
        "Provide a Hugging Face token as the secret `HF_TOKEN`. On Kaggle: notebook editor -> "
        "Add-ons -> Secrets -> add a secret labelled `HF_TOKEN`, tick it for this notebook, then "
        "run again (secrets cannot be attached to a pushed batch run from outside the editor). "
        "Locally: `export HF_TOKEN=hf_...` in the shell that runs `make run`. The token's account "
        "must have accepted the model licence on its Hugging Face page."
    )


def register_secret(value: str | None) -> None:
    """Remember a secret value so that `redact` removes it from any text."""
    if value and len(value) >= 8:
        _secret_values.add(value)


def registered_secrets() -> frozenset[str]:
    return frozenset(_secret_values)


def redact(text: str) -> str:
    for value in sorted(_secret_values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for pattern in TOKEN_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return text


class RedactingFilter(logging.Filter):
    """Logging filter that redacts secrets from every record passing through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install_log_redaction() -> None:
    """Attach the redacting filter to the root logger's handlers and to absl's."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        from absl import logging as absl_logging

        handlers.append(absl_logging.get_absl_handler())
    except ImportError:
        pass
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


@dataclasses.dataclass(frozen=True)
class Token:
    value: str | None = dataclasses.field(repr=False)
    source: str  # "env:HF_TOKEN" | "kaggle-secrets:HF_TOKEN" | "none"

    def __bool__(self) -> bool:
        return bool(self.value)


def _kaggle_secret(label: str) -> str:
    """Read a Kaggle secret through Kaggle's own `kaggle_secrets` module (Kaggle's image only).
    Every failure becomes an AuthError naming the label: `get_secret` raises `BackendError`
    when no such secret is attached, `CredentialError` without a JWT (its 401/403 branch is
    shadowed by the URLError one), `ValidationError` for an empty label and `ConnectionError`
    on network and HTTP errors (docker-python patches/kaggle_secrets.py)."""
    try:
        import kaggle_secrets  # type: ignore[import-not-found]
    except ImportError:
        raise AuthError(f"Kaggle Secrets are not available in this session (no kaggle_secrets "
                        f"module: not Kaggle's notebook image); attach the secret '{label}' in "
                        "the notebook editor (Add-ons -> Secrets), or export HF_TOKEN outside "
                        "Kaggle.") from None
    hints = {  # by exception class name
        "BackendError": f"no secret labelled '{label}' is attached to this notebook, or the "
                        "secrets service failed",
        "CredentialError": "the secrets service refused this session (HTTP 401/403 or no "
                           "KAGGLE_USER_SECRETS_TOKEN)",
        "ValidationError": "the label is empty",
        "ConnectionError": "the secrets service could not be reached or refused the request "
                           "(is internet on?)",
    }
    errors = tuple(getattr(kaggle_secrets, name) for name in hints
                   if isinstance(getattr(kaggle_secrets, name, None), type))
    try:
        return kaggle_secrets.UserSecretsClient().get_secret(label)
    except (*errors, ConnectionError) as exc:
        hint = hints.get(type(exc).__name__, "the secrets service failed")
        raise AuthError(f"Kaggle secret '{label}' could not be read: {hint} "
                        f"({type(exc).__name__}). Attach it in the notebook editor: Add-ons -> "
                        f"Secrets -> '{label}', then re-run.") from None


def resolve_hf_token(on_kaggle: bool, *, required: bool = False) -> Token:
    """HF token: huggingface_hub's lookup (HF_TOKEN, then the `hf auth login` token file), then
    on Kaggle the secret labelled HF_TOKEN; raises AuthError if `required` and none is found."""
    from huggingface_hub import get_token

    value = get_token()
    if value:
        register_secret(value)
        # An environment variable, else huggingface_hub's own store (token file or OIDC).
        source = next((f"env:{var}" for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
                       if os.environ.get(var, "").strip() == value), "huggingface_hub")
        return Token(value, source)
    if on_kaggle:
        try:
            value = _kaggle_secret(HF_SECRET_LABEL)
        except AuthError:
            if required:
                raise
            value = None
        if value:
            register_secret(value)
            return Token(value, f"kaggle-secrets:{HF_SECRET_LABEL}")
    if required:
        where = ("attach the Kaggle secret 'HF_TOKEN' (Add-ons -> Secrets)" if on_kaggle
                 else "export HF_TOKEN in the shell that runs `make run`")
        raise AuthError(f"This model is gated and no Hugging Face token was found: {where}.")
    return Token(None, "none")


def kaggle_access_token_source() -> str | None:
    """Where kagglesdk finds an access token, named (never read out): KAGGLE_API_TOKEN (a token
    or a file path), ~/.kaggle/access_token; None without one. kagglesdk sends it as a bearer
    from every client built without a token of its own, whichever credentials authenticated."""
    from kagglesdk.kaggle_env import get_access_token_from_env

    token, source = get_access_token_from_env()
    if not token:
        return None
    return {"access_token": "~/.kaggle/access_token"}.get(source, source or "API token")


def kaggle_credentials_source() -> str | None:
    """Which Kaggle credentials kagglehub would use (named, never read out), or None: an API
    token (KAGGLE_API_TOKEN, ~/.kaggle/access_token), then KAGGLE_USERNAME + KAGGLE_KEY, then
    kaggle.json in $KAGGLE_CONFIG_DIR or ~/.kaggle (malformed: none)."""
    from kagglehub.config import get_kaggle_credentials

    try:
        credentials = get_kaggle_credentials()
    except ValueError:
        return None
    if credentials is None:
        return None
    if credentials.api_key:
        return kaggle_access_token_source() or "API token"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    return "kaggle.json"


def kaggle_authenticated_source(auth_method: str | None, config_file: str) -> str:
    """Name the credentials the kaggle client authenticated with, from its `auth_method`
    (ACCESS_TOKEN, LEGACY_API_KEY, OAUTH) and the kaggle.json it reads."""
    if auth_method == "ACCESS_TOKEN":
        return kaggle_access_token_source() or "an access token"
    if auth_method == "LEGACY_API_KEY":
        if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
            return "KAGGLE_USERNAME/KAGGLE_KEY"
        return f"kaggle.json ({config_file})"
    if auth_method == "OAUTH":
        return "OAuth credentials (`kaggle auth login`)"
    return "the kaggle client's own configuration"


def register_environment_secrets() -> None:
    """Register secrets that live in the environment (SECRET_ENV_VARS) for redaction."""
    for var in SECRET_ENV_VARS:
        register_secret(os.environ.get(var))
