"""Package tests on matching hardware (issue 17): source packages that declare a hwspec
(``XS-Requires-Hwspec`` in the .dsc and Sources, ``X-Requires-Hwspec`` in debian/control, a
test stanza's own field in debian/tests/control), read from configured archives or from a .dsc,
and their autopkgtest runs.

A run holds its devices as a training job does: it *is* a job (``TestRun.job``) of the
project named by ``PORTAL_TEST_RUNS_PROJECT``, placed by the same fair-share scheduler in the
same Allocation table, whose agent runs autopkgtest instead of a script (docs/agent.md).
"""

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone

from portal.inventory.models import DriverStack
from portal.jobs.models import Job

# Debian policy 5.6.1 (source package names) and 5.6.12 (versions).
SOURCE_NAME = RegexValidator(r"^[a-z0-9][a-z0-9+.-]+$", "A Debian source package name.")
VERSION = RegexValidator(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*$", "A Debian version.")
ARCHIVE_URL = RegexValidator(r"^(?:https?|file)://\S+$", "An http(s):// or file:// URL.")


class Archive(models.Model):
    """A Debian archive (or a mirror of one) whose Sources indices the watcher reads."""

    name = models.SlugField(max_length=40, unique=True)
    url = models.CharField(max_length=300, validators=[ARCHIVE_URL])
    suites = models.JSONField(default=list, help_text='e.g. ["unstable", "experimental"]')
    components = models.JSONField(default=list, help_text='e.g. ["main", "contrib", "non-free"]')
    enabled = models.BooleanField(default=True)
    # A new version of a package that declares a hwspec gets a run of its own.
    queue_new_versions = models.BooleanField(default=True)
    # Mail the package's Maintainer about its results (off by default: opt in per archive).
    mail_maintainers = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name


class SourceIndex(models.Model):
    """One Sources index of an archive (suite x component), read again only when it changed."""

    archive = models.ForeignKey(Archive, on_delete=models.CASCADE, related_name="indices")
    suite = models.CharField(max_length=64)
    component = models.CharField(max_length=64)
    # What says the index is unchanged: its SHA256 from the Release file, or the server's
    # ETag / Last-Modified when there is no Release file.
    validator = models.CharField(max_length=200, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    packages = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["archive", "suite", "component"]
        constraints = [
            models.UniqueConstraint(
                fields=["archive", "suite", "component"], name="one_index_per_suite_component"
            )
        ]

    def __str__(self):
        return f"{self.archive} {self.suite}/{self.component}"


class SourcePackage(models.Model):
    """One version of a source package, from an archive or from a .dsc a member gave."""

    name = models.CharField(max_length=100, validators=[SOURCE_NAME])
    version = models.CharField(max_length=100, validators=[VERSION])
    archive = models.ForeignKey(
        Archive, on_delete=models.CASCADE, null=True, blank=True, related_name="packages"
    )
    suite = models.CharField(max_length=64, blank=True)
    component = models.CharField(max_length=64, blank=True)
    maintainer = models.CharField(max_length=300, blank=True)
    # The package's hwspec as written (either spelling), alternatives and all; "" for none.
    hwspec = models.CharField(max_length=200, blank=True)
    # The test stanzas: [{"tests": ["smoke"], "hwspec": "cuda", "restrictions": [...]}, ...],
    # each stanza's hwspec its own field or else the package's.
    tests = models.JSONField(default=list, blank=True)
    testsuite = models.CharField(max_length=200, blank=True)  # the .dsc's Testsuite field
    # Why the package's hwspec fields could not be read (malformed), said on its page.
    error = models.TextField(blank=True)
    # Where its files are: the archive's Directory and the .dsc's Files, with SHA256s.
    directory = models.CharField(max_length=300, blank=True)
    files = models.JSONField(default=list, blank=True)  # [{"name", "size", "sha256"}]
    dsc_url = models.CharField(max_length=500, blank=True)  # a .dsc named by a member
    uploaded = models.FileField(upload_to="packages/uploads/", blank=True)  # a .tar of the files
    submitter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    seen = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "-seen", "-id"]
        indexes = [models.Index(fields=["name", "seen"])]
        constraints = [
            models.UniqueConstraint(
                fields=["archive", "name", "version"],
                condition=models.Q(archive__isnull=False),
                name="one_source_version_per_archive",
            )
        ]

    def __str__(self):
        return f"src:{self.name} {self.version}"


class TestRun(models.Model):
    """An autopkgtest run of a source package on one hwspec and stack, as a job."""

    class Trigger(models.TextChoices):
        REQUEST = "request", "asked by a member"
        NEW_VERSION = "new-version", "a new version in the archive"
        STACK_REFRESH = "stack-refresh", "the stack's chroot changed"
        RETRY = "retry", "retried after a testbed failure"

    class Result(models.TextChoices):
        # As debci says them (autopkgtest's exit codes, portal/packages/results.py).
        PASS = "pass", "pass"
        FAIL = "fail", "fail"
        NEUTRAL = "neutral", "neutral"
        TMPFAIL = "tmpfail", "tmpfail"

    package = models.ForeignKey(SourcePackage, on_delete=models.CASCADE, related_name="runs")
    hwspec = models.CharField(max_length=40)  # the alternative this run tests, e.g. "cuda"
    stack = models.ForeignKey(DriverStack, on_delete=models.PROTECT)
    # The test names run (autopkgtest --test-name); empty: every test of the package.
    tests = models.JSONField(default=list, blank=True)
    trigger = models.CharField(max_length=16, choices=Trigger.choices)
    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="test_runs",
    )
    job = models.OneToOneField(
        Job, on_delete=models.SET_NULL, null=True, blank=True, related_name="test_run"
    )
    result = models.CharField(max_length=8, choices=Result.choices, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    # Passed before (the last run of the same package name, hwspec and stack), fails now.
    regression = models.BooleanField(default=False)
    # What the run's tests said, parsed from autopkgtest's summary: {"smoke": "PASS", ...}.
    summary = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["result", "finished"])]

    def __str__(self):
        return f"{self.package} on {self.hwspec}/{self.stack} (#{self.pk})"
