"""Whether jax has already started its backends (platform flags set later are ignored).

Written against jax/jaxlib 0.10.2. Reads the private `jax._src.xla_bridge._backends`: jax has
no public way to ask this without starting the backends itself (`jax.devices()` starts them).
Goes away when jax offers one; no upstream issue filed yet.
"""

from __future__ import annotations


def backends_initialised() -> bool:
    """True once jax has initialised a backend; True too if the private name has moved (the
    caller then warns that flags may come too late rather than assuming they apply)."""
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)
    except Exception:  # pragma: no cover - private API moved
        return True
