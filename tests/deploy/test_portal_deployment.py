"""ansible/portal.yml turns a fresh Debian machine into the portal's server, and upgrades it.

The machine is a test host booted by systemd (tests/deploy/container.py); the playbook points
it at this machine's PostgreSQL and Redis (a database, user and Celery queue of this run's own,
dropped at the end) and runs nginx on free loopback ports with a self-signed certificate. From
outside, over HTTPS through nginx, as users and admins meet it: the home page, an API token
booking a reservation that the deployed worker opens on a registered test host, `check
--deploy`, a backup restored into an empty database, a second run that changes nothing, an
upgrade to a newer commit with a migration while the site answers, and a failed migration that
leaves the running release alone. The steps share one deployment and run in this file's order.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.ansible.bootstrap import missing as bootstrap_missing
from tests.ansible.bootstrap import recap
from tests.conftest import require
from tests.deploy.container import SystemdHost
from tests.deploy.deploy import PlaybookFailed, Site, run_playbook, write_inventory
from tests.operations.harness import FAKE_SMI, SMI_XML, SMI_XML_ON_HOST, host_fingerprint
from tests.provisioning.sshd import free_port, keygen
from tests.testhost import TestHost

pytestmark = [pytest.mark.ansible, pytest.mark.host, pytest.mark.postgres, pytest.mark.once]

REPO = Path(__file__).resolve().parent.parent.parent
PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
REDIS_DB = 11  # the Celery queue is this run's own; the database number keeps it off others'
APPLIED = "SELECT count(*) FROM django_migrations WHERE app = 'booking' AND name = :'name'"
RESERVATION_STATE = "SELECT state FROM booking_reservation WHERE id = :id"
UNITS = [
    "porterbox-portal-gunicorn.socket", "porterbox-portal-gunicorn.service",
    "porterbox-portal-worker@1.service", "porterbox-portal-beat.service",
    "porterbox-portal-backup.timer",
]  # fmt: skip


def psql(sql: str, database: str = "postgres", **variables: object) -> str:
    """sql's output, its :name's psql's variables (on stdin: -c would not expand them)."""
    values = [f"--set={name}={value}" for name, value in variables.items()]
    done = subprocess.run(
        ["psql", *PG, "-X", "-At", "-v", "ON_ERROR_STOP=1", *values, "-d", database],
        input=sql, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError:
        return False
    return True


def git(repo: Path, *argv: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *argv], check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_migration(repo: Path, name: str, sql: str) -> tuple[str, str]:
    """A newer commit of the repository with one more migration of booking: the commit's id
    and the migration's name."""
    migrations = repo / "portal" / "booking" / "migrations"
    latest = sorted(p.stem for p in migrations.glob("[0-9][0-9][0-9][0-9]_*.py"))[-1]
    number = int(latest[:4]) + 1
    migration = f"{number:04d}_{name}"
    (migrations / f"{migration}.py").write_text(
        "from django.db import migrations\n\n\n"
        "class Migration(migrations.Migration):\n"
        f"    dependencies = [('booking', '{latest}')]\n"
        f"    operations = [migrations.RunSQL({sql!r}, migrations.RunSQL.noop)]\n"
    )
    git(repo, "add", "portal/booking/migrations")
    git(repo, "commit", "-q", "-m", f"deployment test: {name}")
    return git(repo, "rev-parse", "HEAD"), migration


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The portal deployed on a fresh machine by ansible/portal.yml at this repository's HEAD."""
    lacking = [*SystemdHost.missing(), *bootstrap_missing()]
    lacking += [tool for tool in ("git", "psql", "pg_restore") if not shutil.which(tool)]
    lacking += [f"{name} on 127.0.0.1:{port}" for name, port in (("PostgreSQL", 5432),
                ("Redis", 6379)) if not reachable(port)]  # fmt: skip
    require(not lacking, f"{', '.join(lacking)} (to deploy the portal)")
    base = tmp_path_factory.mktemp("deploy")
    repo = base / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True, timeout=120)
    git(repo, "config", "user.email", "test@example.org")
    git(repo, "config", "user.name", "deployment test")
    first = git(repo, "rev-parse", "HEAD")
    name = f"porterbox_deploy_{uuid.uuid4().hex[:8]}"
    ports = {"https": free_port(), "http": free_port()}
    variables = {
        "portal_source_repo": str(repo),
        "portal_version": first,
        "portal_archive_dir": str(base / "archives"),
        "portal_server_name": "127.0.0.1",
        "portal_nginx_listen_address": "127.0.0.1",
        "portal_https_port": ports["https"],
        "portal_http_port": ports["http"],
        "portal_tls_self_signed": True,
        "portal_tls_self_signed_san": "IP:127.0.0.1",
        "portal_tls_certificate": "/etc/ssl/certs/porterbox-portal.pem",
        "portal_tls_certificate_key": "/etc/ssl/private/porterbox-portal.key",
        # This machine's servers, which the test host shares: not installed, not started.
        "portal_postgresql_server": False,
        "portal_database_name": name,
        "portal_database_user": name,
        "portal_redis_server": False,
        "portal_broker_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "portal_cache_url": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "portal_celery_queue": name,
        "portal_gunicorn_workers": 2,
        "portal_worker_concurrency": 2,
    }
    host = SystemdHost().start(base / "portal")
    gpu_host = None
    try:
        root_key = keygen(base / "root_ed25519")
        host.authorize_root(root_key.with_suffix(".pub").read_text())
        inventory = write_inventory(host, root_key=root_key, tmp=base, variables=variables)
        started = time.monotonic()
        output = run_playbook(inventory, base)
        seconds = time.monotonic() - started
        (base / "site.pem").write_text(host.read_file(variables["portal_tls_certificate"]))
        site = Site(f"https://127.0.0.1:{ports['https']}", base / "site.pem")
        state = SimpleNamespace(
            host=host, base=base, repo=repo, inventory=inventory, first=first, name=name,
            ports=ports, site=site, output=output, seconds=seconds, reservation=None, token="",
        )  # fmt: skip
        yield state
        gpu_host = getattr(state, "gpu_host", None)
    finally:
        host.stop()
        if gpu_host is not None:
            gpu_host.stop()
        for database in (name, f"{name}_restored"):
            psql('DROP DATABASE IF EXISTS :"name" WITH (FORCE)', name=database)
        psql('DROP ROLE IF EXISTS :"name"', name=name)
        shutil.rmtree(base, ignore_errors=True)


def manage(deployed, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """porterbox-portal-manage (manage.py as the portal's user, its environment) in the host."""
    return deployed.host.exec(["porterbox-portal-manage", *argv], check=check, timeout=120)


def current_release(deployed) -> str:
    return deployed.host.run("readlink", "/srv/porterbox/current").strip()


def test_it_serves_the_portal_over_https_through_nginx(deployed):
    assert recap(deployed.output, "portalhost")["failed"] == 0, deployed.output
    # The database and its owner were made by the role (this run's names were new).
    created = deployed.output.split("TASK [portal : Create the portal's database and its owner]")
    assert "changed: [portalhost]" in created[1].split("TASK [")[0], deployed.output
    print(f"first run: {deployed.seconds:.0f}s")

    home = deployed.site.request("/")
    assert home.status == 200, home.body[:500]
    assert b"porterbox" in home.body.lower()
    assert home.headers["Strict-Transport-Security"].startswith("max-age=31536000")

    # Static files come from nginx (its cache headers), out of the release's collectstatic.
    [stylesheet] = re.findall(rb'href="(/static/[^"]+[.]css)"', home.body)[:1]
    static = deployed.site.request(stylesheet.decode())
    assert static.status == 200
    assert "immutable" in static.headers["Cache-Control"]
    assert static.headers["Strict-Transport-Security"].startswith("max-age=")

    # Plain HTTP only redirects to the site.
    plain = http.client.HTTPConnection("127.0.0.1", deployed.ports["http"], timeout=10)
    plain.request("GET", "/accounts/login/")
    answer = plain.getresponse()
    assert answer.status == 301
    assert answer.getheader("Location") == f"{deployed.site.url}/accounts/login/"


def test_its_units_run_sandboxed_with_exactly_one_beat(deployed):
    host = deployed.host
    for unit in UNITS:
        assert host.unit_property(unit, "ActiveState") == "active", unit
        assert host.unit_property(unit, "UnitFileState") == "enabled", unit
    units = [f"/etc/systemd/system/{unit}" for unit in UNITS if "@" not in unit]
    units.append("/etc/systemd/system/porterbox-portal-worker@.service")
    verified = host.exec(["systemd-analyze", "verify", *units])
    assert verified.returncode == 0, verified.stderr
    for unit in ("porterbox-portal-gunicorn.service", "porterbox-portal-worker@1.service",
                 "porterbox-portal-beat.service"):  # fmt: skip
        assert host.unit_property(unit, "User") == "porterbox-portal"
        assert host.unit_property(unit, "NoNewPrivileges") == "yes"
        assert host.unit_property(unit, "ProtectSystem") == "strict"
        assert host.unit_property(unit, "Restart") == "always"
        assert host.unit_property(unit, "CapabilityBoundingSet") == ""
    beats = [p for p in host.processes() if re.search(r"celery .*\bbeat\b", p["cmdline"])]
    assert len(beats) == 1, beats
    # The secrets: files of the portal's user alone.
    listing = host.run("stat", "-c", "%U %a %n", "/etc/porterbox-portal/secrets/SECRET_KEY",
                       "/etc/porterbox-portal/secrets/DATABASE_URL")  # fmt: skip
    assert [line.split()[:2] for line in listing.splitlines()] == [["porterbox-portal", "400"]] * 2
    assert "SECRET_KEY=" not in host.read_file("/etc/porterbox-portal/portal.env")


def test_check_deploy_is_clean_inside(deployed):
    done = manage(deployed, "check", "--deploy", "--fail-level", "WARNING", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


GPU_HOST_AGENT = {
    "group": "porterbox-users",
    "devices": {"nvidia": {"0": ["/dev/nvidia0"], "1": ["/dev/nvidia1"]}},
    "shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
}
SETUP_USER = """
from portal.accounts.models import User
from portal.accounts.services import ssh_key_add
from portal.accounts.sshkeys import parse_public_key
from portal.booking.models import BookingPolicy
from portal.inventory.models import DriverStack
from rest_framework.authtoken.models import Token
DriverStack.objects.get_or_create(
    name="cuda-12", defaults={"chroot": "cuda-12", "hwspecs": ["cuda"]}
)
alice = User.objects.create(
    username="alice", email="alice@example.org", debian_member_source="staff"
)
ssh_key_add(user=alice, key=parse_public_key(%r))
policy = BookingPolicy.current()
policy.granularity_minutes = policy.min_minutes = 1
policy.save()
print("token", Token.objects.create(user=alice).key)
"""


def test_an_api_token_books_a_reservation_whose_session_the_worker_opens(deployed):
    base = deployed.base
    # A GPU host with the agent (tests/ansible bootstraps one with site.yml: not the subject
    # here), whose portal key is the deployed portal's.
    gpu_host = TestHost(["nvidia0", "nvidia1", "nvidiactl"]).start(base / "gpu")
    deployed.gpu_host = gpu_host
    gpu_host.add_stack("cuda-12", "cuda-12")
    gpu_host.install_agent(GPU_HOST_AGENT)
    gpu_host.write_file(SMI_XML_ON_HOST, SMI_XML.read_text())
    gpu_host.write_file("/usr/bin/nvidia-smi", FAKE_SMI, 0o755)
    gpu_host.authorize_portal(deployed.host.read_file("/etc/porterbox-portal/ssh/id_ed25519.pub"))
    alice_key = keygen(base / "alice_ed25519")
    out = manage(deployed, "shell", "-c", SETUP_USER % alice_key.with_suffix(".pub").read_text())
    [token] = re.findall(r"^token (\w+)$", out.stdout, re.M)
    registered = manage(
        deployed, "register_host", "testhost", "127.0.0.1", "--port", str(gpu_host.port),
        "--fingerprint", host_fingerprint(gpu_host),
    )  # fmt: skip
    assert registered.returncode == 0, registered.stdout + registered.stderr

    api = Site(deployed.site.url, deployed.site.cafile, token=token)
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    booked = api.request("/api/reservations/", {
        "host": "testhost", "stack": "cuda-12", "devices": [0],
        "start": start.isoformat(), "end": (start + timedelta(minutes=30)).isoformat(),
    })  # fmt: skip
    assert booked.status == 201, booked.body
    reservation = booked.json()
    deployed.reservation, deployed.token = reservation["id"], token

    # The deployed beat and worker reconcile the host: the session opens, alice logs in.
    deadline = time.monotonic() + 120
    path = f"/api/reservations/{reservation['id']}/"
    while (state := api.request(path).json())["state"] != "active":
        assert time.monotonic() < deadline, state
        time.sleep(1)
    known_hosts = base / "gpu_known_hosts"
    known_hosts.write_text(gpu_host.known_hosts)
    login = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(alice_key), "-p", str(gpu_host.port),
         "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10",
         f"{reservation['ssh']['user']}@127.0.0.1", "echo $CUDA_VISIBLE_DEVICES"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (login.returncode, login.stdout.strip()) == (0, "0"), login.stderr


def test_a_backup_restores_into_an_empty_database(deployed):
    assert deployed.reservation, "the booking step did not run"
    host = deployed.host
    host.run("systemctl", "start", "porterbox-portal-backup.service")  # what the timer starts
    [dump] = host.run("sh", "-c", "ls /var/backups/porterbox-portal/porterbox-*.dump").split()
    assert host.run("stat", "-c", "%U %a", dump).split() == ["porterbox-portal", "600"]

    # docs/deployment.md's restore, into an empty database of the portal's owner.
    restored = f"{deployed.name}_restored"
    psql('CREATE DATABASE :"name" OWNER :"owner"', name=restored, owner=deployed.name)
    done = subprocess.run(
        ["pg_restore", *PG, "--no-owner", f"--role={deployed.name}", "--exit-on-error",
         "-d", restored, str(host.path(dump))],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert psql(RESERVATION_STATE, restored, id=deployed.reservation) == "active"


def test_a_second_run_changes_nothing(deployed):
    output = run_playbook(deployed.inventory, deployed.base)
    assert recap(output, "portalhost")["changed"] == 0, output


def test_an_upgrade_migrates_while_the_site_answers(deployed):
    sql = "CREATE TABLE deploy_upgrade (n int)"
    newer, migration = commit_migration(deployed.repo, "deploy_upgrade", sql)
    answers: list[tuple[float, int | str]] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            asked = time.monotonic()
            try:
                status: int | str = deployed.site.request("/", timeout=60).status
            except OSError as error:
                status = repr(error)
            answers.append((time.monotonic() - asked, status))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_playbook(deployed.inventory, deployed.base, "-e", f"portal_version={newer}")
    finally:
        done.set()
        watcher.join()

    assert current_release(deployed) == f"/srv/porterbox/releases/{newer}"
    assert f"[X] {migration}" in manage(deployed, "showmigrations", "booking").stdout
    assert psql("SELECT to_regclass('deploy_upgrade') IS NOT NULL", deployed.name) == "t"
    assert [status for _, status in answers if status != 200] == []
    print(f"upgrade: {len(answers)} requests, the slowest {max(s for s, _ in answers):.1f}s")
    # The new release serves the reservation booked before, to its owner's token.
    api = Site(deployed.site.url, deployed.site.cafile, token=deployed.token)
    kept = api.request(f"/api/reservations/{deployed.reservation}/")
    assert (kept.status, kept.json()["state"]) == (200, "active")


def test_a_failed_migration_leaves_the_old_release_running(deployed):
    host = deployed.host
    running = current_release(deployed)
    pid = host.unit_property("porterbox-portal-gunicorn.service", "MainPID")
    broken, migration = commit_migration(deployed.repo, "deploy_broken", "SELECT 1/0")

    with pytest.raises(PlaybookFailed) as failed:
        run_playbook(deployed.inventory, deployed.base, "-e", f"portal_version={broken}")
    assert "division by zero" in failed.value.output

    assert current_release(deployed) == running
    assert host.unit_property("porterbox-portal-gunicorn.service", "MainPID") == pid
    assert deployed.site.request("/").status == 200
    applied = psql(APPLIED, deployed.name, name=migration)
    assert applied == "0"
