"""The agent client for a host: over SSH with its pinned keys, or locally in single-machine mode.

One `Transport` per worker process (portal/ssh.py), so each host gets one reused SSH connection
per worker.
"""

from django.conf import settings

from portal.inventory.models import Host
from portal.ssh import reset_transport, transport
from provisioning.client import AgentClient, local_runner, ssh_runner
from provisioning.transport import Target

__all__ = ["client_for", "is_reachable_in_principle", "reset_transport", "transport"]


def is_reachable_in_principle(host: Host) -> bool:
    """A host the loop may talk to: local, or registered with pinned keys."""
    return host.connection == Host.Connection.LOCAL or bool(host.host_keys.strip())


def client_for(host: Host) -> AgentClient:
    if host.connection == Host.Connection.LOCAL:
        return AgentClient(local_runner(settings.PORTAL_LOCAL_AGENT))
    target = Target(host.fqdn, host.ssh_port, host.agent_user, host.host_keys)
    return AgentClient(ssh_runner(transport(), target))
