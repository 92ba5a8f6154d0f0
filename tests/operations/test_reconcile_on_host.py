"""The reconcile loop against a real host: real sshd, real agent, real schroot sessions.

A slot booked to start now gives its user a login within seconds, inside the stack's schroot
session, seeing and opening only the booked devices; after the end the login is refused and no
process of the user is left. Faults (sshd down, a session ended by hand, a changed host key)
show up on the reservation and converge once the fault is gone.
"""

import json
import math
import time
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from portal.booking.models import Allocation, Reservation
from portal.booking.services import reservation_end_now
from portal.operations import services
from tests.helpers import delivered, wait_for
from tests.operations.conftest import book_now, state_of

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

S = Reservation.State
BERLIN = ZoneInfo("Europe/Berlin")

# What a login prints: the session's chroot, the devices the frameworks will pick, and which
# device nodes the user can open for writing.
PROBE = (
    "cat /etc/debian_chroot; echo CUDA=$CUDA_VISIBLE_DEVICES; "
    "for n in 0 1; do if echo x > /dev/nvidia$n; then echo open$n; else echo denied$n; fi; done"
)


def reconcile(host) -> str:
    return services.reconcile_host(host.pk)


def test_it_registers_the_host_with_its_pinned_keys_devices_and_stacks(registered, testhost):
    assert sorted(registered.host_keys.splitlines()) == sorted(testhost.host_keys.splitlines())
    devices = list(registered.accelerators.order_by("index"))
    assert [(a.index, a.vendor, a.model) for a in devices] == [
        (0, "nvidia", "NVIDIA RTX A5000"),
        (1, "nvidia", "NVIDIA RTX A5000"),
    ]
    assert devices[0].memory_mib == 24564
    assert [s.name for s in registered.stacks.all()] == ["cuda-12"]


def test_it_opens_the_session_at_the_start_and_closes_it_at_the_end(registered, person, testhost):
    alice = person("alice")
    reservation = book_now(alice, registered, [1])

    assert f"granted r{reservation.pk}" in reconcile(registered)
    assert state_of(reservation) == S.ACTIVE
    login = alice.ssh(PROBE)
    assert login.returncode == 0, login.stderr
    assert login.stdout.split() == ["cuda-12", "CUDA=1", "denied0", "open1"]
    assert delivered()[0].to == [alice.user.email]
    assert "ssh -p" in delivered()[0].body and "is ready" in delivered()[0].subject

    # A process left running, detached from the login: the end must take it too.
    alice.ssh("setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")
    uid = testhost.uid(alice.unix)
    assert any("sleep 1000" in p["cmdline"] for p in testhost.processes(uid))

    # The slot ends a moment from now, as if time had passed.
    end = timezone.now() + timedelta(seconds=1)
    Reservation.objects.filter(pk=reservation.pk).update(end=end)
    Allocation.objects.filter(reservation=reservation).update(end=end)
    wait_for(lambda: timezone.now() > end, what="the end of the slot")
    reconcile(registered)

    assert state_of(reservation) == S.ENDED
    assert alice.ssh("true").returncode == 255  # refused at authentication
    assert testhost.processes(uid) == []
    reservation.refresh_from_db()
    assert reservation.revoked_at is not None


def test_it_shows_the_user_why_the_host_is_unreachable_and_converges_when_it_is_back(
    registered, person, testhost
):
    bob = person("bob")
    reservation = book_now(bob, registered, [0])
    testhost.stop_sshd()
    testhost.exec(["pkill", "-KILL", "-f", "^sshd: porterbox"])  # the portal's open connection
    try:
        reconcile(registered)
        reservation.refresh_from_db()
        assert reservation.state == S.FAILED
        assert "cannot be reached" in reservation.last_error
        registered.refresh_from_db()
        assert "unreachable" in registered.last_error or "refused" in registered.last_error
    finally:
        testhost.start_sshd()

    reconcile(registered)
    reservation.refresh_from_db()
    assert (reservation.state, reservation.last_error) == (S.ACTIVE, "")
    assert bob.ssh(PROBE).stdout.split() == ["cuda-12", "CUDA=0", "open0", "denied1"]


def test_it_recreates_a_session_ended_by_hand_on_the_host(registered, person, testhost):
    carol = person("carol")
    reservation = book_now(carol, registered, [0, 1])
    reconcile(registered)
    assert carol.ssh("true").returncode == 0

    testhost.run("schroot", "--end-session", "-c", f"session:porterbox-r{reservation.pk}")
    assert carol.ssh("true").returncode != 0  # no session to land in

    assert f"granted r{reservation.pk}" in reconcile(registered)
    login = carol.ssh(PROBE)
    assert login.stdout.split() == ["cuda-12", "CUDA=0,1", "open0", "open1"]


def test_it_revokes_at_once_when_the_user_ends_the_reservation(registered, person, testhost):
    dave = person("dave")
    reservation = book_now(dave, registered, [1])
    reconcile(registered)
    assert dave.ssh("true").returncode == 0

    reservation_end_now(reservation=reservation, actor=dave.user)
    assert state_of(reservation) == S.ENDING
    reconcile(registered)

    assert state_of(reservation) == S.ENDED
    assert dave.ssh("true").returncode == 255
    assert testhost.processes(testhost.uid(dave.unix)) == []


@pytest.mark.parametrize("withdrawn", ["deactivated", "member role removed"])
def test_it_revokes_within_one_pass_a_user_who_may_no_longer_hold_a_session(
    registered, person, testhost, withdrawn
):
    from portal.booking.models import AuditEntry

    frank = person(f"frank{len(withdrawn)}")
    reservation = book_now(frank, registered, [0])
    reconcile(registered)
    assert frank.ssh("true").returncode == 0
    frank.ssh("setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")

    # Staff take access away in the admin; nothing touches the reservation itself.
    if withdrawn == "deactivated":
        frank.user.is_active = False
    else:
        frank.user.debian_member_source = ""
    frank.user.save()
    done = reconcile(registered)

    assert f"withdrew r{reservation.pk}" in done and f"revoked r{reservation.pk}" in done
    assert state_of(reservation) == S.ENDED
    assert frank.ssh("true").returncode == 255
    assert testhost.processes(testhost.uid(frank.unix)) == []
    entry = AuditEntry.objects.get(reservation=reservation, action="withdraw access")
    assert entry.actor is None
    assert (
        entry.detail["reason"]
        == {
            "deactivated": "your account was deactivated",
            "member role removed": "your account no longer has the Debian member role",
        }[withdrawn]
    )
    assert "was ended" in delivered()[-1].subject and delivered()[-1].to == [frank.user.email]
    # And no new session for them at the next pass either.
    assert f"granted r{reservation.pk}" not in reconcile(registered)


def test_it_refuses_a_host_whose_key_changed_and_sends_it_nothing(
    registered, person, testhost, keys_dir, settings
):
    settings.ADMINS = [("Admins", "admins@example.org")]
    erin = person("erin")
    reservation = book_now(erin, registered, [0])
    impostor = (keys_dir / "portal_ed25519.pub").read_text().split()[:2]  # not the host's key
    registered.host_keys = " ".join(impostor) + "\n"
    registered.save()
    accepted_before = testhost.sshd_log.count("Accepted publickey")

    reconcile(registered)

    registered.refresh_from_db()
    assert registered.key_mismatch
    assert "host key" in registered.last_error
    assert "Host key mismatch on testhost" in delivered()[0].subject  # the alarm
    assert delivered()[0].to == ["admins@example.org"]
    assert testhost.sshd_log.count("Accepted publickey") == accepted_before  # never logged in
    assert not testhost.exists(f"/var/lib/porterbox/sessions/r{reservation.pk}.json")
    reservation.refresh_from_db()
    assert reservation.state == S.FAILED
    reconcile(registered)
    assert len(delivered()) == 1  # one alarm, not one per pass


def test_it_registers_a_host_from_the_staff_page_after_the_keys_are_confirmed(
    client, staff, testhost, portal_settings
):
    from django.urls import reverse

    from portal.inventory.models import Host
    from tests.factories import DriverStackFactory

    DriverStackFactory(name="cuda-12")
    client.force_login(staff)
    form = {"name": "gpu7", "fqdn": "127.0.0.1", "ssh_port": testhost.port}
    form["agent_user"] = "porterbox"
    url = reverse("operations:host_register")

    shown = client.post(url, form)
    fingerprint = testhost.run("ssh-keygen", "-lf", "/etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    assert fingerprint in shown.content.decode()
    assert not Host.objects.filter(name="gpu7").exists()  # nothing pinned before confirmation

    keys = shown.context["offered"]
    done = client.post(url, {**form, "confirm": "1", "key": keys}, follow=True)

    host = Host.objects.get(name="gpu7")
    assert sorted(host.host_keys.splitlines()) == sorted(testhost.host_keys.splitlines())
    assert host.accelerators.count() == 2
    assert "gpu7 registered: 2 new" in done.content.decode()
    from django.contrib.admin.models import LogEntry

    (pinned,) = LogEntry.objects.filter(object_id=str(host.pk), user=staff)
    assert pinned.change_message.startswith("Host keys pinned as confirmed: ")
    assert fingerprint in pinned.change_message

    tampered = client.post(url, {**form, "confirm": "1", "key": keys[:1]})
    assert tampered.status_code == 409


def test_it_mails_the_user_when_the_session_is_ready_and_before_it_ends(registered, person):
    heidi = person("heidi")
    heidi.user.time_zone = "Europe/Berlin"
    heidi.user.save()
    reservation = book_now(heidi, registered, [0], minutes=10)  # ends within 15 minutes

    reconcile(registered)
    reconcile(registered)  # a second pass sends nothing twice

    subjects = [m.subject for m in delivered()]
    assert subjects == [
        "Your session on testhost is ready",
        f"Your session on testhost ends at {reservation.end.astimezone(BERLIN):%H:%M %Z}",
    ]
    assert all(m.to == [heidi.user.email] for m in delivered())


def test_it_calls_the_agent_without_ssh_in_single_machine_mode(
    registered, person, testhost, settings
):
    # The portal runs on the GPU host: the same agent, called locally (here: inside the test
    # host's namespaces, where it is installed), with no SSH and no pinned key involved.
    settings.PORTAL_LOCAL_AGENT = [
        "nsenter", "-t", str(testhost.pid), "--mount", "--pid", "--uts", "--root", "--wd",
        "/usr/local/sbin/porterbox-hostctl", "--ssh",
    ]  # fmt: skip
    registered.connection = registered.Connection.LOCAL
    registered.host_keys = ""
    registered.save()
    ivan = person("ivan")
    reservation = book_now(ivan, registered, [1])

    assert f"granted r{reservation.pk}" in reconcile(registered)
    assert ivan.ssh("echo $CUDA_VISIBLE_DEVICES").stdout.split() == ["1"]


def installed_command(testhost, path: str, line_start: str, containing: str = "") -> list[str]:
    """The command line a unit or rule file, as Ansible installed it on the host, runs."""
    import re
    import shlex

    for line in testhost.read_file(path).splitlines():
        if line.startswith(line_start) and containing in line:
            if match := re.search(r'RUN\+="([^"]+)"', line):
                return shlex.split(match.group(1))
            return shlex.split(line.split("=", 1)[1])
    raise AssertionError(f"no {line_start!r} in {path}")


def test_the_host_revokes_a_session_at_its_end_by_itself_with_the_portal_down(
    registered, person, testhost
):
    judy = person("judy")
    reservation = book_now(judy, registered, [0])
    reconcile(registered)
    judy.ssh("setsid sleep 1000 >/dev/null 2>&1 < /dev/null &")

    # Shortened to end in a moment: the next pass grants again, with the new end.
    end = timezone.now() + timedelta(seconds=3)
    Reservation.objects.filter(pk=reservation.pk).update(end=end)
    Allocation.objects.filter(reservation=reservation).update(end=end)
    assert f"granted r{reservation.pk}" in reconcile(registered)
    record = testhost.read_file(f"/var/lib/porterbox/sessions/r{reservation.pk}.json")
    host_end = json.loads(record)["end"]
    assert host_end == math.ceil(end.timestamp())  # whole seconds, never before the slot's end

    # From here no worker runs: only the host's timer, as the systemd unit would run it.
    expire = installed_command(
        testhost, "/etc/systemd/system/porterbox-expire.service", "ExecStart="
    )
    assert expire == ["/usr/local/sbin/porterbox-hostctl", "--expire"]
    assert json.loads(testhost.run(*expire))["expired"] == []  # not yet
    assert judy.ssh("true").returncode == 0
    wait_for(lambda: time.time() >= host_end, what="the end of the slot")
    answer = json.loads(testhost.run(*expire))

    assert answer["expired"] == [f"r{reservation.pk}"] and answer["killed"] >= 1
    assert judy.ssh("true").returncode == 255
    assert testhost.processes(testhost.uid(judy.unix)) == []
    assert reservation.state != S.ENDED  # the portal learns it at its next pass
    reconcile(registered)
    assert state_of(reservation) == S.ENDED


def test_it_gives_device_access_back_after_udev_resets_a_node(registered, person, testhost):
    kim = person("kim")
    book_now(kim, registered, [1])
    reconcile(registered)
    assert kim.ssh(PROBE).stdout.split()[-2:] == ["denied0", "open1"]

    testhost.run("setfacl", "-b", "/dev/nvidia1")  # what udev's add/change event does to it
    assert kim.ssh(PROBE).stdout.split()[-2:] == ["denied0", "denied1"]
    # What udev runs after its event, by the rule Ansible installed for this node.
    rule = installed_command(
        testhost, "/etc/udev/rules.d/70-porterbox.rules", "ACTION==", 'DEVNAME}=="/dev/nvidia1"'
    )
    assert rule == ["/usr/local/sbin/porterbox-hostctl", "--reapply-acls", "/dev/nvidia1"]
    testhost.run(*rule)

    assert kim.ssh(PROBE).stdout.split()[-2:] == ["denied0", "open1"]
    # Only nodes of the device map: anything else is refused, and nothing is changed.
    refused = testhost.exec(["/usr/local/sbin/porterbox-hostctl", "--reapply-acls", "/dev/sda"])
    assert refused.returncode == 1 and "not a device of this host" in refused.stdout
