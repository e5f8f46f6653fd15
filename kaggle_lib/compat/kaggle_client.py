"""Internals of the kaggle client (KaggleApi) and of kagglesdk's KaggleClient.

Written against kaggle 2.2.4 and kagglesdk 0.1.37.
- `http_session` reads the private `KaggleHttpClient._session`: kagglesdk's client calls
  `session.send` without a timeout and offers no public way to set one or to mount an adapter,
  so `kaggle.push.kaggle_client` mounts its timeout/retry adapter on that session. Goes away
  when kagglesdk takes a timeout (or a session); no upstream issue filed yet.
- `client_authentication` reads the private `KaggleApi._authenticated` and the method that
  `KaggleApi.authenticate` stored in `config_values["auth_method"]` (`AuthMethod` names):
  `import kaggle` swallows authentication errors, and nothing public says which credentials
  won. Goes away if KaggleApi exposes them.
"""

from __future__ import annotations

from typing import Any


def http_session(client: Any) -> Any:
    """The requests.Session of `client` (`api.build_kaggle_client()`)."""
    return client.http_client()._session


def client_authentication(api: Any) -> tuple[bool, str | None, str]:
    """(authenticated, auth method: ACCESS_TOKEN | LEGACY_API_KEY | OAUTH | None, the path of
    the kaggle.json the client reads) of `kaggle.api`."""
    method = api.config_values.get(api.CONFIG_NAME_AUTH_METHOD)
    return bool(getattr(api, "_authenticated", False)), method, str(api.config)
