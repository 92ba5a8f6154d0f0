"""The installed `porterbox` command against the portal served by gunicorn (tests/cli/conftest.py).

Times are real (gunicorn's clock cannot be frozen): bookings go to tomorrow, on the grid.
"""

from __future__ import annotations

import json
import stat
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.core.files.base import ContentFile
from django.db import connection
from rest_framework.authtoken.models import Token

from portal.booking.models import Reservation
from portal.jobs.models import Job
from portal.jobs.services import write_array_tasks
from tests.cli.conftest import PORTERBOX, ZONE
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    PartnerMembershipFactory,
    UserFactory,
    tarball,
)

TOMORROW_10 = (datetime.now(UTC) + timedelta(days=1)).replace(
    hour=10, minute=0, second=0, microsecond=0
)


def shown(moment: datetime) -> str:
    """A time as the client shows it: local, with the zone's name."""
    return moment.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M %Z")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture
def host():
    host = HostFactory(name="gpu1", fqdn="gpu1.debian.net", ssh_port=2222)
    host.stacks.add(DriverStackFactory(name="cuda-12"))
    for i in range(2):
        AcceleratorFactory(host=host, index=i)
    return host


@pytest.fixture
def alice():
    return UserFactory(username="alice", debian_member_source="salsa")


def test_it_logs_in_with_the_token_kept_private(porterbox, alice):
    token = porterbox.login(alice)

    directory = porterbox.home / "config" / "porterbox"
    saved = json.loads((directory / "config.json").read_text())
    name = porterbox.url.removeprefix("http://")
    assert saved == {"default": name, "portals": {name: {"url": porterbox.url, "token": token}}}
    assert stat.S_IMODE((directory / "config.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    # Asked for with hidden input when PORTERBOX_TOKEN is unset; a second portal, by name.
    done = porterbox("--portal", "other", "login", porterbox.url, input=f"{token}\n")
    assert done.code == 0, done.err
    assert token not in done.out + done.err
    assert set(json.loads((directory / "config.json").read_text())["portals"]) == {name, "other"}
    assert porterbox("--portal", "other", "list").code == 0
    done = porterbox("--portal", "nowhere", "list")
    assert done.code == 3 and "(not_logged_in)" in done.err


def test_it_refuses_a_wrong_token_and_says_when_nobody_is_logged_in(porterbox, alice):
    done = porterbox("list")
    assert done.code == 3
    assert done.err.startswith("porterbox: error: not logged in") and "(not_logged_in)" in done.err

    done = porterbox("login", porterbox.url, PORTERBOX_TOKEN="0" * 40)
    assert done.code == 3
    assert "porterbox: error: Invalid token. " in done.err
    assert "(authentication_failed)" in done.err
    assert not (porterbox.home / "config" / "porterbox" / "config.json").exists()

    # The environment alone is enough for a script.
    token = Token.objects.create(user=alice).key
    done = porterbox("--json", "list", PORTERBOX_URL=porterbox.url, PORTERBOX_TOKEN=token)
    assert done.code == 0, done.err
    assert done.json() == []


def test_it_lists_hosts_and_finds_slots_in_the_local_zone(porterbox, alice, host):
    porterbox.login(alice)
    done = porterbox("hosts")
    assert done.code == 0, done.err
    header, row = done.out.splitlines()
    assert header.split() == ["HOST", "STATE", "ARCH", "STACKS", "HWSPECS", "DEVICES"]
    assert row.split()[:5] == ["gpu1", "active", "amd64", "cuda-12", "cpu,cuda,cuda:sm_90"]
    assert row.endswith("2x nvidia NVIDIA H100 80GB HBM3 80G")
    assert header.index("STACKS") == row.index("cuda-12")  # aligned
    assert porterbox("--json", "hosts").json()[0]["accelerators"][1]["index"] == 1

    start = TOMORROW_10.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%dT%H:%M")  # local, no offset
    need = ("--count", "2", "--hwspec", "cuda | rocm", "--memory", "40", "--hours", "3")
    done = porterbox("find", *need, "--stack", "cuda-12", "--from", start)
    assert done.code == 0, done.err
    assert done.out.splitlines()[1].split("  ")[0] == "gpu1"
    assert f"{shown(TOMORROW_10)}  {shown(TOMORROW_10 + timedelta(hours=3))}" in done.out
    slots = porterbox("--json", "find", *need, "--from", start).json()
    assert [(s["host"], utc(s["start"]), s["free"]) for s in slots] == [("gpu1", TOMORROW_10, 2)]

    done = porterbox("find", "--count", "3", "--from", start)
    assert done.code == 0 and done.out == ""
    assert "No slot meets the need" in done.err
    done = porterbox("find", "--hwspec", "quantum")
    assert done.code == 1 and done.err.startswith("porterbox: error: hwspec: ")


def test_it_books_by_need_and_by_devices_lists_shows_and_cancels(porterbox, alice, host):
    porterbox.login(alice)
    start = TOMORROW_10.isoformat()
    done = porterbox("--json", "book", "-n", "1", "--hwspec", "cuda", "--hours", "2",
                     "--stack", "cuda-12", "--from", start)  # fmt: skip
    assert done.code == 0, done.err
    by_need = done.json()
    assert (by_need["host"], by_need["devices"]) == ("gpu1", [0])
    assert (utc(by_need["start"]), utc(by_need["end"])) == (
        TOMORROW_10, TOMORROW_10 + timedelta(hours=2),
    )  # fmt: skip

    done = porterbox("book", "--host", "gpu1", "--devices", "1", "--from", start, "--hours",
                     "1h30m", "--stack", "cuda-12", "--purpose", "bisect a driver bug")  # fmt: skip
    assert done.code == 0, done.err
    assert f"From:        {shown(TOMORROW_10)}" in done.out
    assert f"Until:       {shown(TOMORROW_10 + timedelta(minutes=90))}" in done.out
    assert "ssh -p 2222 alice@gpu1.debian.net" in done.out
    chosen = Reservation.objects.get(allocations__accelerator__index=1)

    listed = porterbox("list").out.splitlines()
    assert listed[0].split() == ["ID", "STATE", "HOST", "DEVICES", "STACK", "FROM", "UNTIL"]
    assert sorted(line.split()[0] for line in listed[1:]) == sorted(
        [str(by_need["id"]), str(chosen.pk)]
    )
    assert porterbox("--json", "show", str(chosen.pk)).json()["purpose"] == "bisect a driver bug"

    done = porterbox("cancel", str(chosen.pk))
    assert done.code == 0 and "State:       cancelled" in done.out
    done = porterbox("cancel", str(chosen.pk))
    assert done.code == 1 and "(immutable)" in done.err

    # Without --from: the first slot that fits, from the next step of the grid (15 minutes).
    before = datetime.now(UTC)
    done = porterbox("--json", "book", "-n", "1", "--hours", "1", "--stack", "cuda-12")
    assert done.code == 0, done.err
    step = timedelta(minutes=15)
    assert before - step < utc(done.json()["start"]) <= before + step

    # The same devices again: taken, and the answer names what is in the way.
    done = porterbox("book", "--host", "gpu1", "--devices", "0,1", "--from", start,
                     "--hours", "1", "--stack", "cuda-12")  # fmt: skip
    assert done.code == 1 and "gpu1 #0 is your own booking" in done.err
    assert done.err.endswith("(conflict)\n")


def test_it_refuses_to_extend_past_a_neighbour_and_names_the_blocker(porterbox, alice, host):
    porterbox.login(alice)
    start = TOMORROW_10.isoformat()
    mine = porterbox("--json", "book", "--host", "gpu1", "--devices", "0", "--from", start,
                     "--hours", "2", "--stack", "cuda-12").json()  # fmt: skip
    bob = porterbox.__class__(porterbox.home / "bob", porterbox.url)
    bob.login(UserFactory(username="bob", debian_member_source="staff"))
    noon = TOMORROW_10 + timedelta(hours=2)
    done = bob("book", "--host", "gpu1", "--devices", "0", "--from", noon.isoformat(),
               "--hours", "1", "--stack", "cuda-12")  # fmt: skip
    assert done.code == 0, done.err

    done = porterbox("extend", str(mine["id"]), "--by", "2h")
    assert done.code == 1
    assert done.out == ""
    error, limit, blocker = done.err.splitlines()
    assert error.startswith("porterbox: error: ") and error.endswith("(conflict)")
    assert "gpu1 #0 is booked" in error  # the portal's own words
    assert limit == f"  at most until {shown(noon)} (the next booking of its devices)"
    assert blocker == (
        f"  in the way: gpu1 #0, booked {shown(noon)} - {shown(noon + timedelta(hours=1))}"
    )
    assert Reservation.objects.get(pk=mine["id"]).end == noon

    done = porterbox("--json", "shorten", str(mine["id"]), "--by", "30m")
    assert done.code == 0, done.err
    assert utc(done.json()["end"]) == noon - timedelta(minutes=30)
    done = porterbox("extend", str(mine["id"]), "--to", noon.isoformat())
    assert done.code == 0, done.err
    assert f"Until:       {shown(noon)}" in done.out


def test_it_exits_with_codes_scripts_can_rely_on(porterbox, alice, host, unused_port):
    porterbox.login(alice)
    done = porterbox("show", "999999")
    assert (done.code, done.err.strip()[-11:]) == (1, "(not_found)")
    assert porterbox("show", "nine").code == 2  # usage: click's own message
    assert porterbox("extend", "1").code == 2  # neither --to nor --by
    assert porterbox("book", "--hours", "two").code == 2
    done = porterbox("list", PORTERBOX_URL=f"http://127.0.0.1:{unused_port}")
    assert done.code == 4 and "(unreachable)" in done.err
    done = porterbox("jobs", "output", "999999", "-o", str(porterbox.home / "out.tar.gz"))
    assert done.code == 1 and done.err.endswith("(not_found)\n")
    assert not (porterbox.home / "out.tar.gz").exists()


def test_it_completes_commands_in_bash(porterbox):
    done = porterbox(_PORTERBOX_COMPLETE="bash_source")
    assert done.code == 0 and "_porterbox_completion" in done.out
    done = porterbox(_PORTERBOX_COMPLETE="bash_complete", COMP_WORDS="porterbox ex", COMP_CWORD="1")
    assert done.out.split() == ["plain,extend"]


def test_it_submits_a_job_and_follows_its_log_to_the_end(
    porterbox, alice, host, tmp_path, portal_var, settings
):
    membership = PartnerMembershipFactory(user=alice)
    porterbox.login(alice)
    script = tmp_path / "train.sh"
    script.write_text("python3 train.py\n")
    done = porterbox("--json", "jobs", "submit", "--project", membership.project.slug,
                     "--name", "tiny", "--script", str(script), "--stack", "cuda-12",
                     "--hwspec", "cuda", "--walltime", "30m", "--env", "EPOCHS=3",
                     "--code-licence", "MIT", "--data-licence", "CC0-1.0",
                     "--model-freedom", "free")  # fmt: skip
    assert done.code == 0, done.err
    submitted = done.json()
    assert (submitted["state"], submitted["walltime"], submitted["env"]) == (
        "queued", 0.5, {"EPOCHS": "3"},
    )  # fmt: skip
    job = Job.objects.get(pk=submitted["id"])
    listed = porterbox("jobs", "list").out.splitlines()
    assert listed[1].split()[:4] == [str(job.pk), "queued", membership.project.slug, "tiny"]

    follower = subprocess.Popen(
        [str(PORTERBOX), "jobs", "logs", str(job.pk), "-f", "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=porterbox.env(),
    )  # fmt: skip
    lines = [f"epoch {n}: loss {1 / (n + 1):.3f}\n" for n in range(5)]

    def run_the_job():
        """What the reconcile loop does: the log grows in steps, then the job ends."""
        Job.objects.filter(pk=job.pk).update(state=Job.State.RUNNING)
        log = ""
        for line in lines:
            time.sleep(0.3)
            log += line
            Job.objects.filter(pk=job.pk).update(log=log)
        Job.objects.filter(pk=job.pk).update(state=Job.State.SUCCEEDED, exit_status=0)
        connection.close()  # this thread's own

    writer = threading.Thread(target=run_the_job)
    writer.start()
    try:
        out, err = follower.communicate(timeout=60)
    finally:
        writer.join()
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert out == "".join(lines)

    assert porterbox("jobs", "logs", str(job.pk)).out == "".join(lines)
    done = porterbox("jobs", "show", str(job.pk))
    assert "State:       succeeded" in done.out
    done = porterbox("jobs", "cancel", str(job.pk))
    assert done.code == 1 and "(finished)" in done.err

    # What the job left, as the loop keeps it, downloaded with the token.
    settings.MEDIA_ROOT = portal_var / "media"
    job.output.save("out.tar.gz", ContentFile(b"\x1f\x8bweights"))
    target = tmp_path / "out.tar.gz"
    done = porterbox("jobs", "output", str(job.pk), "-o", str(target))
    assert done.code == 0, done.err
    assert target.read_bytes() == b"\x1f\x8bweights"


@pytest.fixture
def unused_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_it_lists_and_shows_test_runs_and_says_who_may_ask_for_them(porterbox, alice, host):
    from portal.packages.models import SourcePackage
    from portal.packages.models import TestRun as Run  # not TestRun: pytest would collect it

    package = SourcePackage.objects.create(name="gpu-pkg", version="1.0-1", hwspec="cuda")
    stack = host.stacks.get()
    passed = Run.objects.create(
        package=package, hwspec="cuda", stack=stack, trigger=Run.Trigger.NEW_VERSION,
        result=Run.Result.PASS, exit_code=0,
    )  # fmt: skip
    Run.objects.create(package=package, hwspec="cuda", stack=stack, trigger="request")
    porterbox.login(alice)

    done = porterbox("test-runs", "list", "--result", "pass")
    assert done.code == 0, done.err
    header, row = done.out.splitlines()
    assert header.split()[:6] == ["ID", "PACKAGE", "VERSION", "HWSPEC", "STACK", "RESULT"]
    assert row.split()[:6] == [str(passed.pk), "gpu-pkg", "1.0-1", "cuda", "cuda-12", "pass"]
    assert len(porterbox("--json", "test-runs", "list", "--package", "gpu-pkg").json()) == 2
    done = porterbox("test-runs", "show", str(passed.pk))
    assert "Package:   gpu-pkg 1.0-1" in done.out and "Result:    pass" in done.out

    outsider = porterbox.__class__(porterbox.home / "oscar", porterbox.url)
    outsider.login(UserFactory(username="oscar"))
    done = outsider("test-runs", "request", "gpu-pkg")
    assert done.code == 1 and "Only Debian members" in done.err
    assert outsider("test-runs", "request").code == 2


def test_it_uploads_an_input_archive_for_an_array_and_cancels_the_array(porterbox, alice, host,
                                                                          tmp_path):  # fmt: skip
    membership = PartnerMembershipFactory(user=alice)
    porterbox.login(alice)
    archive = tmp_path / "input.tar.gz"
    archive.write_bytes(tarball({"train.py": b"print('hello')\n"}))
    done = porterbox("--json", "jobs", "submit", "--project", membership.project.slug,
                     "--name", "sweep", "--script", "-", "--stack", "cuda-12",
                     "--walltime", "1h", "--archive", str(archive), "--array", "2",
                     "--env", "LR=0.1", "--code-licence", "MIT", "--data-licence", "CC0-1.0",
                     "--model-freedom", "free", input="python3 train.py\n")  # fmt: skip
    assert done.code == 0, done.err
    first = done.json()
    assert first["input_archive"] is True and first["env"] == {"LR": "0.1"}
    assert (first["array_size"], first["array_pending"]) == (2, 1)
    assert Job.objects.get(pk=first["id"]).script == "python3 train.py\n"
    shown = porterbox("jobs", "show", str(first["id"])).out
    assert (
        "2 tasks (1 written at the scheduler's next pass); "
        f"list them: porterbox jobs list --array {first['id']}"
    ) in shown
    write_array_tasks()  # the scheduler's next pass
    listed = porterbox("--json", "jobs", "list", "--array", str(first["id"])).json()
    assert [(j["array"], j["array_index"]) for j in listed] == [(first["id"], i) for i in (0, 1)]
    second = porterbox("jobs", "show", str(listed[1]["id"])).out
    assert f"task 1 of 2 of array #{first['id']}" in second

    done = porterbox("--json", "jobs", "cancel", "--array", str(first["id"]))
    assert done.code == 0, done.err

    # A Slurm partition the portal does not know: the API's words, a script's exit code.
    refused = porterbox("jobs", "submit", "--project", membership.project.slug, "--name", "x",
                        "--script", "-", "--stack", "cuda-12", "--walltime", "1h",
                        "--partition", "hpc/nope", "--code-licence", "MIT",
                        "--data-licence", "CC0-1.0", "--model-freedom", "free",
                        input="true\n")  # fmt: skip
    assert refused.code == 1
    assert "No cluster partition 'hpc/nope'." in refused.err
    assert set(Job.objects.values_list("state", flat=True)) == {Job.State.CANCELLED}
