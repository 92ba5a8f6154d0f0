"""Training jobs end to end on the test host: scheduled, started, logged, finished, charged.

The scheduler places jobs in the database; the reconcile loop starts them on the host through
the agent, copies their logs, records how they ended and frees their devices.
"""

import hashlib
import io
import ipaddress
import os
import ssl
import subprocess
import tarfile
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from portal.booking.models import Allocation
from portal.booking.services import reservation_create
from portal.inventory.models import Host
from portal.jobs import scheduler
from portal.jobs.models import Job
from portal.jobs.services import job_submit
from portal.operations import jobs as loop_jobs
from portal.operations import services
from provisioning.client import AgentClient
from tests.browser.conftest import browser, login, page, screenshot  # noqa: F401 - fixtures
from tests.factories import PASSWORD, PartnerMembershipFactory
from tests.helpers import wait_for

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

J = Job.State


@pytest.fixture
def member(registered, settings):
    settings.JOBS_STOP_GRACE_SECONDS = 1
    return PartnerMembershipFactory(project__slug="lm", project__max_walltime_hours=48)


def submit(member, host, script, walltime=timedelta(hours=1), **kwargs):
    return job_submit(
        project=member.project, submitter=member.user, name="train", script=script,
        stack=host.stacks.get(name="cuda-12"), walltime=walltime, code_licence="MIT",
        data_licence="CC0-1.0", model_freedom="free", **kwargs,
    )  # fmt: skip


def run_until(host, job, states, timeout=60):
    """Reconcile passes until the job reaches one of states (as the worker's beat would)."""

    def reached():
        services.reconcile_host(host.pk)
        return Job.objects.get(pk=job.pk).state in states

    wait_for(reached, timeout=timeout, interval=0.3, what=f"job {job.pk} in {states}")
    return Job.objects.get(pk=job.pk)


def test_it_runs_a_job_on_a_free_device_and_charges_its_device_hours(
    registered, member, testhost, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    job = submit(
        member, registered,
        'echo "hello from $(id -un) on $CUDA_VISIBLE_DEVICES with $EPOCHS"\n'
        'echo weights > "$PORTERBOX_OUTPUT/model.bin"\nexit 0\n',
        env={"EPOCHS": "3"},
    )  # fmt: skip

    placed = scheduler.schedule()
    assert list(placed.placed) == [job.pk]
    job = run_until(registered, job, Job.FINISHED)

    assert (job.state, job.exit_status) == (J.SUCCEEDED, 0)
    device = Allocation.objects.get(job=job).accelerator.index
    assert f"hello from pj-{member.project_id} on {device} with 3" in job.log
    held = Allocation.objects.get(job=job)
    assert held.end == job.ended_at  # the device is free again from the job's end
    assert timedelta(0) < held.end - held.start < timedelta(minutes=1)
    assert 0 < scheduler.month_usage(timezone.now())[member.project_id] < 1 / 60
    assert not testhost.exists(f"/var/lib/porterbox/jobs/j{job.pk}")  # cleaned on the host
    with tarfile.open(fileobj=job.output.open("rb"), mode="r:gz") as kept:
        assert kept.extractfile("output/model.bin").read() == b"weights\n"


def test_a_job_that_would_overlap_a_reservation_waits(registered, member, person):
    alice = person("alice")
    start = timezone.now().replace(second=0, microsecond=0) + timedelta(minutes=30)
    reservation_create(
        user=alice.user, host=registered, stack=registered.stacks.get(), start=start,
        end=start + timedelta(hours=1), whole_host=True,
    )  # fmt: skip
    long = submit(member, registered, "sleep 1", walltime=timedelta(hours=2))

    result = scheduler.schedule()

    assert long.pk not in result.placed
    long.refresh_from_db()
    assert long.state == J.QUEUED and "free for its walltime" in long.wait_reason


def test_a_job_past_its_walltime_is_killed(registered, member, testhost):
    job = submit(member, registered, "trap '' TERM\nsleep 1000\n", walltime=timedelta(seconds=2))
    scheduler.schedule()

    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.TIMED_OUT
    assert "porterbox: " in job.log  # the supervisor says what it did
    assert testhost.processes(testhost.uid(f"pj-{member.project_id}")) == []


def test_a_running_job_is_cancelled_by_a_member(registered, member, testhost):
    from portal.jobs.services import job_cancel

    job = submit(member, registered, "sleep 1000\n")
    scheduler.schedule()
    run_until(registered, job, (J.RUNNING,))

    job_cancel(job=job, actor=member.user)
    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.CANCELLED
    assert testhost.processes(testhost.uid(f"pj-{member.project_id}")) == []


def test_a_job_whose_host_fails_is_requeued_and_its_old_attempt_dropped(
    registered, member, testhost, settings
):
    settings.JOBS_HOST_FAILURE_SECONDS = 0
    job = submit(member, registered, "sleep 1000\n")
    scheduler.schedule()
    run_until(registered, job, (J.RUNNING,))

    testhost.stop_sshd()
    testhost.exec(["pkill", "-KILL", "-f", "^sshd: porterbox"])  # the portal's connection
    try:
        services.reconcile_host(registered.pk)
    finally:
        testhost.start_sshd()

    job.refresh_from_db()
    assert (job.state, job.requeues, job.host) == (J.REQUEUED, 1, None)
    assert not Allocation.objects.filter(job=job, end__gt=timezone.now()).exists()
    # Unreachable past JOBS_HOST_FAILURE_SECONDS, the host was drained too; its first answer
    # puts it back in service (docs/decisions.md, "Telemetry and health").
    assert Host.objects.get(pk=registered.pk).state == Host.State.MAINTENANCE
    services.reconcile_host(registered.pk)
    assert Host.objects.get(pk=registered.pk).state == Host.State.ACTIVE
    # The host is back with the first attempt still running: it is stopped, and the requeued
    # job starts again as a new attempt.
    scheduler.schedule()
    job = run_until(registered, job, (J.RUNNING, *Job.FINISHED))
    assert job.state == J.RUNNING, (job.last_error, job.wait_reason, job.log)
    assert job.session_name == f"j{job.pk}-1"
    assert not testhost.exists(f"/var/lib/porterbox/jobs/j{job.pk}")
    assert testhost.exists(f"/var/lib/porterbox/jobs/j{job.pk}-1")


def test_it_charges_a_job_only_from_when_it_started_on_the_host(registered, member):
    job = submit(member, registered, "sleep 1\n")
    # Placed half an hour ago, and not started since (its host was away, say).
    placed_at = timezone.now() - timedelta(minutes=30)
    Job.objects.filter(pk=job.pk).update(queued_at=placed_at - timedelta(minutes=1))
    assert list(scheduler.schedule(placed_at).placed) == [job.pk]
    assert scheduler.month_usage(timezone.now()).get(member.project_id, 0) == 0

    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.SUCCEEDED, (job.last_error, job.log)
    held = Allocation.objects.get(job=job)
    assert (held.start, held.end) == (job.started_at, job.ended_at)
    assert 0 < scheduler.month_usage(timezone.now())[member.project_id] < 1 / 60


# -- inputs, outputs and logs of every size and kind ----------------------------------------


class GitHandler(BaseHTTPRequestHandler):
    """git's smart HTTP protocol through `git http-backend` (CGI), as a forge serves it."""

    root = ""

    def do_GET(self):
        self._backend()

    def do_POST(self):
        self._backend()

    def _backend(self):
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=True
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def _certificate(directory):
    """A self-signed certificate for 127.0.0.1: (certificate file, key file, PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return directory / "cert.pem", directory / "key.pem", pem


def _git(*argv, cwd):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "LANG": "C.UTF-8"}
    subprocess.run(["git", *argv], cwd=cwd, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def git_server(testhost, tmp_path_factory):
    """https://127.0.0.1:<port>/repo.git, a repository whose default branch is "trunk" (not
    main), with a tag v1 and a branch "feature"; which.txt says which one was checked out.
    The host trusts the server's certificate as it would a forge's (its CA bundle)."""
    base = tmp_path_factory.mktemp("git")
    work = base / "work"
    work.mkdir()
    _git("init", "-q", "-b", "trunk", cwd=work)
    _git("config", "user.email", "ci@example.org", cwd=work)
    _git("config", "user.name", "CI", cwd=work)
    for what, step in (("tagged", ["tag", "v1"]), ("trunk", None)):
        (work / "which.txt").write_text(f"{what}\n")
        _git("add", "which.txt", cwd=work)
        _git("commit", "-q", "-m", what, cwd=work)
        if step:
            _git(*step, cwd=work)
    _git("branch", "feature", "v1", cwd=work)
    _git("checkout", "-q", "feature", cwd=work)
    (work / "which.txt").write_text("feature\n")
    _git("commit", "-q", "-am", "feature", cwd=work)
    _git("checkout", "-q", "trunk", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(base / "repo.git"), cwd=base)

    cert, key, pem = _certificate(base)
    bundle = testhost.path("/etc/ssl/certs/ca-certificates.crt")
    original = bundle.read_bytes()
    bundle.write_bytes(original + pem)
    handler = type("Handler", (GitHandler,), {"root": str(base)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/repo.git"
    finally:
        server.shutdown()
        server.server_close()
        bundle.write_bytes(original)


@pytest.mark.parametrize(
    ("ref", "checked_out"), [("", "trunk"), ("v1", "tagged"), ("feature", "feature")]
)
def test_it_clones_a_git_input_at_the_default_branch_a_tag_or_a_branch(
    registered, member, git_server, ref, checked_out
):
    job = submit(member, registered, "cat which.txt\n", input_git_url=git_server,
                 input_git_ref=ref)  # fmt: skip
    scheduler.schedule()

    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.SUCCEEDED, (job.last_error, job.log)
    lines = [line for line in job.log.splitlines() if not line.startswith("porterbox: ")]
    assert checked_out in lines, job.log
    at = ref or "its default branch"
    assert f"porterbox: cloning {git_server} at {at}" in job.log


@pytest.mark.browser
def test_it_keeps_binary_output_readable_and_another_projects_job_still_runs(
    registered,
    member,
    settings,
    tmp_path,
    live_server,
    page,  # noqa: F811 - the fixture
):
    """NUL bytes and invalid UTF-8 in a log: replaced visibly, never a pass that fails again
    and again (PostgreSQL's text refuses NUL), so the job ends and the host's other jobs run."""
    settings.MEDIA_ROOT = tmp_path
    script = (
        "printf 'before\\000after \\377\\376 end\\n'\n"
        "printf 'x\\000y' > \"$PORTERBOX_OUTPUT/bin.dat\"\n"
    )
    binary = submit(member, registered, script)
    other = PartnerMembershipFactory(project__slug="other", project__max_walltime_hours=48)
    later = submit(other, registered, "echo other project\n")
    assert set(scheduler.schedule().placed) == {binary.pk, later.pk}

    def both_finished():
        services.reconcile_host(registered.pk)
        return set(
            Job.objects.filter(pk__in=[binary.pk, later.pk]).values_list("state", flat=True)
        ) <= set(Job.FINISHED)

    wait_for(both_finished, timeout=60, interval=0.3, what="both jobs finished")
    binary, later = Job.objects.get(pk=binary.pk), Job.objects.get(pk=later.pk)
    assert (binary.state, later.state) == (J.SUCCEEDED, J.SUCCEEDED), (binary.log, later.log)
    assert "before\ufffdafter \ufffd\ufffd end" in binary.log
    assert "\0" not in binary.log and "other project" in later.log
    with tarfile.open(fileobj=binary.output.open("rb"), mode="r:gz") as kept:
        assert kept.extractfile("output/bin.dat").read() == b"x\0y"

    login(page, live_server, member.user.username, PASSWORD)
    page.goto(f"{live_server.url}/jobs/{binary.pk}/")
    assert "before\ufffdafter \ufffd\ufffd end" in page.locator("pre.log").text_content()
    screenshot(page, "job-binary-output")
    with page.expect_download() as download:
        page.get_by_role("link", name="What the job left").click()
    with tarfile.open(download.value.path(), mode="r:gz") as fetched:
        assert fetched.extractfile("output/bin.dat").read() == b"x\0y"


def test_it_streams_a_10_mb_archive_in_and_its_output_out(registered, member, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    data = os.urandom(10 * 1024 * 1024)  # incompressible: the archive is as large
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("data/weights.bin")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    upload = SimpleUploadedFile("input.tar.gz", buffer.getvalue())
    assert upload.size > 10 * 1024 * 1024
    script = 'sha256sum data/weights.bin\ncp data/weights.bin "$PORTERBOX_OUTPUT/"\n'
    job = submit(member, registered, script, input_archive=upload)
    scheduler.schedule()

    job = run_until(registered, job, Job.FINISHED)

    assert job.state == J.SUCCEEDED, (job.last_error, job.log)
    assert f"{hashlib.sha256(data).hexdigest()}  data/weights.bin" in job.log
    with tarfile.open(fileobj=job.output.open("rb"), mode="r:gz") as kept:
        assert kept.extractfile("output/weights.bin").read() == data


def test_it_keeps_the_tail_of_a_50_mb_log_copying_a_bounded_amount_per_pass(
    registered, member, settings, client, monkeypatch
):
    settings.JOBS_MAX_LOG_KB = 256
    keep = 256 * 1024
    copied = []  # bytes of the host's log each pass read
    job_logs = AgentClient.job_logs

    def counted(self, **kwargs):
        answer = job_logs(self, **kwargs)
        copied[-1] += answer.offset - kwargs["offset"]
        return answer

    monkeypatch.setattr(AgentClient, "job_logs", counted)
    line = "0123456789abcdefghijklmnopqrstuvwxyz" * 2
    script = f"yes {line} | head -c 52428800\necho\necho the-end\n"
    job = submit(member, registered, script)
    scheduler.schedule()

    def finished():
        copied.append(0)
        services.reconcile_host(registered.pk)
        return Job.objects.get(pk=job.pk).state in Job.FINISHED

    wait_for(finished, timeout=120, interval=0.3, what="the job finished")
    job = Job.objects.get(pk=job.pk)

    assert job.state == J.SUCCEEDED, (job.last_error, job.log[-500:])
    assert max(copied) <= keep + loop_jobs.LOG_CHUNK
    assert len(job.log) <= keep and job.log.endswith("the-end\nporterbox: job succeeded\n")
    assert job.log_dropped >= 50 * 1024 * 1024 - keep
    client.force_login(member.user)
    html = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f"the log&#x27;s first {job.log_dropped} characters are dropped" in html
    whole = client.get(f"/jobs/{job.pk}/log/").content.decode()
    assert whole.startswith("[porterbox: the log's first") and "\nthe-end\n" in whole
