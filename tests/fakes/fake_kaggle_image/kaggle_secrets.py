"""Stand-in for the `kaggle_secrets` module of Kaggle's notebook image (tests only).

Behaviour follows Kaggle/docker-python `patches/kaggle_secrets.py` (written anew here, not
copied): `UserSecretsClient()` needs `KAGGLE_USER_SECRETS_TOKEN` (else `CredentialError`);
`get_secret(label)` POSTs `{"Label": label, "JWE": token}` to
`$KAGGLE_URL_BASE/requests/GetUserSecretByLabelRequest` (40 s timeout) and raises
`BackendError` when the answer is not `wasSuccessful` with a `secret`, and the builtin
`ConnectionError` when the service cannot be reached. The real module's `except HTTPError`
branch (CredentialError on 401/403) comes after `except (URLError, socket.timeout)`, and
HTTPError is a URLError, so an HTTP 401/403/500 also surfaces as ConnectionError; this
stand-in does the same. Put this folder on PYTHONPATH to make `import kaggle_secrets` work.
"""

from __future__ import annotations

import json
import os
import urllib.request
from urllib.error import URLError

TIMEOUT_SECS = 40


class CredentialError(Exception):
    pass


class BackendError(Exception):
    pass


class ValidationError(Exception):
    pass


class UserSecretsClient:
    GET_USER_SECRET_BY_LABEL_ENDPOINT = "/requests/GetUserSecretByLabelRequest"

    def __init__(self) -> None:
        self.url_base = os.getenv("KAGGLE_URL_BASE") or "https://www.kaggle.com"
        self.jwt_token = os.getenv("KAGGLE_USER_SECRETS_TOKEN")
        if self.jwt_token is None:
            raise CredentialError("A JWT Token is required to use the UserSecretsClient, but "
                                  "none found in environment variable KAGGLE_USER_SECRETS_TOKEN")

    def get_secret(self, label: str) -> str:
        if not label:
            raise ValidationError("Label must be non-empty.")
        data = json.dumps({"Label": label, "JWE": self.jwt_token}).encode()
        request = urllib.request.Request(self.url_base + self.GET_USER_SECRET_BY_LABEL_ENDPOINT,
                                         data=data, headers={"Content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECS) as response:
                answer = json.loads(response.read())
        except (URLError, TimeoutError) as exc:  # HTTPError included, as in the real module
            raise ConnectionError("Connection error trying to communicate with service.") from exc
        if not answer.get("wasSuccessful") or "secret" not in (answer.get("result") or {}):
            raise BackendError(f"Unexpected response from the service. Response: {answer}.")
        return answer["result"]["secret"]
