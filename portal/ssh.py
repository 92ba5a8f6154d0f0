"""The portal's one SSH transport per worker process: the connections to hosts (their agents)
and to Slurm login nodes, all with the portal's own key and pinned host keys. A project-level
module (below the apps, importing none): operations and clusters both use it."""

import threading

from django.conf import settings

from provisioning.transport import Transport, TransportError

_transport: Transport | None = None
_lock = threading.Lock()


def transport() -> Transport:
    global _transport
    with _lock:
        if _transport is None:
            key = settings.PORTAL_SSH_KEY_FILE
            try:
                _transport = Transport(key, **settings.PORTAL_SSH_TIMEOUTS)
            except (OSError, ValueError) as exc:
                raise TransportError(f"the portal's SSH key {key} cannot be read: {exc}") from exc
        return _transport


def reset_transport() -> None:
    """Close the cached connections (tests, and a worker that changes its key)."""
    global _transport
    with _lock:
        if _transport is not None:
            _transport.close()
        _transport = None
