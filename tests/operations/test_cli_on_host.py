"""`porterbox ssh` opens the session on the real test host, trusting only the keys the portal
pinned: it writes them to its own known_hosts file and runs ssh with StrictHostKeyChecking=yes.

The portal serves the API with gunicorn (tests/cli/conftest.py); the reconcile pass runs here.
The user is a plain Debian member: the host's API answer carries its pinned `host_keys`.
"""

import pytest

from portal.inventory.models import Host
from portal.operations import services
from tests.cli.conftest import Client, gunicorn, installed, portal_var  # noqa: F401 (fixtures)
from tests.operations.conftest import book_now

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]


def test_porterbox_ssh_logs_in_through_the_pinned_host_keys(
    registered,
    person,
    installed,  # noqa: F811
    gunicorn,  # noqa: F811
    tmp_path,
):
    erin = person("erin")
    reservation = book_now(erin, registered, [0])
    assert f"granted r{reservation.pk}" in services.reconcile_host(registered.pk)

    porterbox = Client(tmp_path, gunicorn)
    porterbox.login(erin.user)
    ssh_options = ["-F", "/dev/null", "-i", str(erin.key), "-o", "BatchMode=yes",
                   "-o", "ConnectTimeout=5"]  # fmt: skip
    done = porterbox("ssh", str(reservation.pk), "--", *ssh_options, "id", "-un")
    assert (done.code, done.out.strip()) == (0, erin.unix), done.err

    known = tmp_path / "config" / "porterbox" / "known_hosts.d"
    [written] = known.iterdir()
    pinned = {" ".join(line.split()[:2]) for line in registered.host_keys.splitlines()}
    lines = written.read_text().splitlines()
    assert {line.split(maxsplit=1)[1] for line in lines} == pinned
    assert all(line.startswith(f"[127.0.0.1]:{registered.ssh_port} ") for line in lines)

    # Keys the host does not have: ssh refuses rather than trusting what it is offered.
    other = (erin.key.with_suffix(".pub")).read_text().split()[:2]
    Host.objects.filter(pk=registered.pk).update(host_keys=" ".join(other) + "\n")
    done = porterbox("ssh", str(reservation.pk), "--", *ssh_options, "id", "-un")
    assert done.code == 255 and done.out == ""
    assert "Host key verification failed" in done.err
