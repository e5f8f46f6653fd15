"""The requests.Session inside a kagglesdk client.

Written against kaggle 2.2.4 and kagglesdk 0.1.37. Reads the private
`KaggleHttpClient._session`: kagglesdk's client calls `session.send` without a timeout and
offers no public way to set one or to mount an adapter, so `kaggle.push.kaggle_client` mounts
its timeout/retry adapter on that session. Goes away when kagglesdk takes a timeout (or a
session); no upstream issue filed yet.
"""

from __future__ import annotations

from typing import Any


def http_session(client: Any) -> Any:
    """The requests.Session of `client` (`api.build_kaggle_client()`)."""
    return client.http_client()._session
