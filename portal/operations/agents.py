"""The agent client for a host: over SSH with its pinned keys, or locally in single-machine mode.

One `Transport` per worker process, so each host gets one reused SSH connection per worker.
"""

import threading

from django.conf import settings

from portal.inventory.models import Host
from provisioning.client import AgentClient, local_runner, ssh_runner
from provisioning.transport import Target, Transport, TransportError

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


def is_reachable_in_principle(host: Host) -> bool:
    """A host the loop may talk to: local, or registered with pinned keys."""
    return host.connection == Host.Connection.LOCAL or bool(host.host_keys.strip())


def client_for(host: Host) -> AgentClient:
    if host.connection == Host.Connection.LOCAL:
        return AgentClient(local_runner(settings.PORTAL_LOCAL_AGENT))
    target = Target(host.fqdn, host.ssh_port, host.agent_user, host.host_keys)
    return AgentClient(ssh_runner(transport(), target))
