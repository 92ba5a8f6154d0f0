"""Register a freshly bootstrapped host: confirm its SSH host key, pin it, pull its inventory."""

from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_slug

from portal.inventory.models import Host
from portal.operations import registration
from provisioning.transport import TransportError


class Command(BaseCommand):
    help = (
        "Fetch a host's SSH keys for you to confirm, pin them, and pull the host's devices and "
        "stacks from its agent. Compare the fingerprints with `ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub` run on the host itself."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the host's short name in the portal, e.g. nv-h100-02")
        parser.add_argument("fqdn", help="where the portal reaches it over SSH")
        parser.add_argument("--port", type=int, default=22)
        parser.add_argument("--agent-user", default="porterbox")
        parser.add_argument(
            "--fingerprint",
            help="the SHA256:... fingerprint you read on the host; confirms without a prompt",
        )
        parser.add_argument(
            "--local",
            action="store_true",
            help="single-machine mode: the portal runs on this host and calls its agent locally",
        )

    def handle(self, *args, name, fqdn, port, agent_user, fingerprint, local, **options):
        try:
            validate_slug(name)
        except Exception as exc:
            raise CommandError(f"name: {exc}") from None
        host = Host.objects.filter(name=name).first() or Host(name=name)
        host.fqdn, host.ssh_port, host.agent_user = fqdn, port, agent_user
        host.connection = Host.Connection.LOCAL if local else Host.Connection.SSH
        try:
            host.full_clean(exclude=["host_keys"])
        except Exception as exc:
            raise CommandError(str(exc)) from None
        if not local:
            lines = self._confirmed_keys(fqdn, port, fingerprint)
        host.save()
        if not local:
            registration.host_pin_keys(host, lines)
            self.stdout.write(f"Pinned {len(lines)} host key(s) for {name}.")
        try:
            result = registration.host_sync_inventory(host)
        except registration.RegistrationError as exc:
            raise CommandError(f"The host is registered, but its inventory failed: {exc}") from None
        self.stdout.write(self.style.SUCCESS(f"{name}: {result}"))

    def _confirmed_keys(self, fqdn, port, fingerprint) -> list[str]:
        try:
            lines = registration.fetch_host_keys(fqdn, port)
        except TransportError as exc:
            raise CommandError(str(exc)) from None
        prints = [line.split()[2] for line in lines]
        for line in lines:
            self.stdout.write(f"  {line.split()[0]}  {line.split()[2]}")
        if fingerprint:
            if fingerprint not in prints:
                raise CommandError(
                    f"{fqdn}:{port} offers no key with fingerprint {fingerprint}; nothing pinned."
                )
        elif input("Are these the host's keys? [y/N] ").strip().lower() != "y":
            raise CommandError("Not confirmed; nothing pinned.")
        return lines
