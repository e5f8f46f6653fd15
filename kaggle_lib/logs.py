"""kaggle_lib's output: log records as the plain lines a print would give.

One handler on the "kaggle_lib" logger writes INFO lines to stdout and WARNING and above to
stderr, message only (the same in a notebook cell, papermill's output and a terminal), through
auth's RedactingFilter: every line of the package passes the secret redaction.
"""

from __future__ import annotations

import logging
import sys

from kaggle_lib import auth

PACKAGE_LOGGER = "kaggle_lib"


class PlainLineHandler(logging.Handler):
    """Writes to the sys.stdout / sys.stderr of the moment of the call: a notebook kernel and
    pytest's capture replace them after this module is imported."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def get_logger(name: str) -> logging.Logger:
    """The logger of a kaggle_lib module (`name` is its __name__), writing through the handler."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    if not any(isinstance(h, PlainLineHandler) for h in logger.handlers):
        handler = PlainLineHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(auth.RedactingFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # The lines are written once, here; a root handler (basicConfig) would repeat them.
        logger.propagate = False
    return logging.getLogger(name)
