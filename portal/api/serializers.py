import copy
import json
import math
from datetime import timedelta

from django.utils.dateparse import parse_duration
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.exceptions import ErrorDetail

from portal.accounts.models import PartnerProject, SSHKey, User
from portal.booking import bounds
from portal.booking.models import Reservation
from portal.booking.services import booking_refs
from portal.inventory.hwspec import Hwspec, InvalidHwspec
from portal.inventory.models import Accelerator, DriverStack, Host
from portal.jobs.models import Job
from portal.jobs.services import MAX_ARRAY, submission_refs
from portal.packages.models import TestRun


def _field_copy(field: serializers.Field) -> serializers.Field:
    """A fresh field to bind: a plain field's attributes copied (DRF's deepcopy instead calls
    its __init__ again, and its validators' and choices' copies, which costs more than the
    rest of a small request); a field holding other fields (a child, a nested serializer)
    deep-copied, so none is bound to two parents."""
    if isinstance(field, serializers.BaseSerializer | serializers.ManyRelatedField) or hasattr(
        field, "child"
    ):
        return copy.deepcopy(field)
    return copy.copy(field)


class FieldsOnce:
    """A serializer builds its fields (a ModelSerializer from the model) at every
    instantiation, a good part of a small request's cost; this builds them once per class and
    hands each instance its own copies. The template is never bound, only copied."""

    def get_fields(self):
        cls = type(self)
        template = cls.__dict__.get("_fields_once")
        if template is None:
            template = super().get_fields()  # type: ignore[misc]
            cls._fields_once = template  # type: ignore[attr-defined]
        return {name: _field_copy(field) for name, field in template.items()}


def _refuse_missing(**messages) -> None:
    """A 400 naming each field whose message is given (a string, not False): what it names
    does not exist, or is not the caller's (code `does_not_exist`, as DRF's related fields)."""
    errors = {
        name: [ErrorDetail(message, "does_not_exist")]
        for name, message in messages.items()
        if message
    }
    if errors:
        raise serializers.ValidationError(errors)


class DriverStackSerializer(FieldsOnce, serializers.ModelSerializer):
    hwspecs = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = DriverStack
        fields = ["name", "hwspecs", "chroot", "suite", "area", "description"]


class AcceleratorSerializer(FieldsOnce, serializers.ModelSerializer):
    host: serializers.SlugRelatedField[Host] = serializers.SlugRelatedField(
        read_only=True, slug_field="name"
    )

    class Meta:
        model = Accelerator
        fields = [
            "host",
            "index",
            "vendor",
            "model",
            "memory_mib",
            "uuid",
            "pci_bus_id",
            "arch",
            "retired",
        ]


class HostSerializer(FieldsOnce, serializers.ModelSerializer):
    # many=True: DRF makes it a ManyRelatedField over this one, which the stubs cannot say.
    stacks: serializers.SlugRelatedField[DriverStack] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )
    accelerators = AcceleratorSerializer(many=True, read_only=True)
    hwspecs = serializers.SerializerMethodField()

    class Meta:
        model = Host
        fields = [
            "name", "fqdn", "ssh_port", "architecture", "state", "access",
            "stacks", "hwspecs", "accelerators", "notes", "host_keys",
        ]  # fmt: skip
        # The keys staff pinned (public keys, "type base64" a line): what `porterbox ssh`
        # writes to a known_hosts file, so no one trusts a key on first use.

    def get_hwspecs(self, host) -> list[str]:
        return [str(spec) for spec in host.hwspecs()]


class SSHKeySerializer(FieldsOnce, serializers.ModelSerializer):
    public_key = serializers.CharField(write_only=True, help_text="One OpenSSH public key line.")

    class Meta:
        model = SSHKey
        fields = [
            "id", "public_key", "key_type", "bits", "fingerprint", "comment", "created",
            "last_used",
        ]  # fmt: skip
        read_only_fields = ["key_type", "bits", "fingerprint", "comment", "created", "last_used"]


class AllocationSerializer(serializers.Serializer):
    host = serializers.CharField(source="accelerator.host.name")
    index = serializers.IntegerField(source="accelerator.index")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()


class SSHLoginSerializer(serializers.Serializer):
    user = serializers.CharField(help_text="The Unix user on the host.")
    host = serializers.CharField(help_text="The host's FQDN.")
    port = serializers.IntegerField()
    command = serializers.CharField(help_text="The ssh command line that logs in.")


class ReservationSerializer(FieldsOnce, serializers.ModelSerializer):
    host: serializers.SlugRelatedField[Host] = serializers.SlugRelatedField(
        read_only=True, slug_field="name"
    )
    stack: serializers.SlugRelatedField[DriverStack] = serializers.SlugRelatedField(
        read_only=True, slug_field="name"
    )
    devices = serializers.SerializerMethodField()
    ssh = serializers.SerializerMethodField()

    class Meta:
        model = Reservation
        fields = [
            "id", "host", "stack", "whole_host", "devices", "purpose", "start", "end", "state",
            "last_error", "granted_at", "revoked_at", "ssh", "created", "updated",
        ]  # fmt: skip

    def get_devices(self, reservation) -> list[int]:
        return sorted(a.accelerator.index for a in reservation.allocations.all())

    @extend_schema_field(SSHLoginSerializer)
    def get_ssh(self, reservation) -> dict:
        return {
            "user": reservation.unix_user,
            "host": reservation.host.fqdn,
            "port": reservation.host.ssh_port,
            "command": reservation.ssh_command,
        }


class AwareDateTimeField(serializers.DateTimeField):
    """ISO 8601 with a UTC offset or Z: an API client's clock zone is not guessed."""

    def to_internal_value(self, value):
        moment = super().to_internal_value(value)
        if isinstance(value, str) and not _has_offset(value):
            self.fail("naive")
        if not bounds.in_bounds(moment.date()):
            self.fail("out_of_range")
        return moment

    default_error_messages = {
        "naive": "Give the time with a UTC offset or Z, as in 2026-11-23T10:00:00+01:00.",
        "out_of_range": bounds.MESSAGE,
        "overflow": bounds.MESSAGE,  # DRF's own, when the conversion to UTC leaves the range
    }


def _has_offset(text: str) -> bool:
    tail = text.strip()[10:]  # after the date
    return tail.endswith(("Z", "z")) or "+" in tail or "-" in tail


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 0},
            {
                "type": "object",
                "properties": {
                    "vendor": {"type": "string", "enum": list(Accelerator.Vendor.values)},
                    "index": {"type": "integer", "minimum": 0},
                },
                "required": ["vendor", "index"],
            },
        ],
        "description": "A device's index, or {vendor, index} where two vendors share the index.",
    }
)
class DeviceField(serializers.Field):
    """A device of the host: its index, or (vendor, index) where the index alone is two
    devices (NVIDIA #0 and AMD #0); ``None`` stands for "any vendor"."""

    default_error_messages = {
        # Braces doubled: DRF formats its messages with str.format (a single one was a 500).
        "invalid": 'Give an index (0) or {{"vendor": "amd", "index": 0}}.',
    }

    def to_internal_value(self, data) -> tuple[str | None, int]:
        if isinstance(data, dict) and set(data) == {"vendor", "index"}:
            vendor, index = data["vendor"], data["index"]
            if vendor not in Accelerator.Vendor.values:
                self.fail("invalid")
        else:
            vendor, index = None, data
        if type(index) is not int or index < 0:  # bool is an int: true is not device 1
            self.fail("invalid")
        return vendor, index

    def to_representation(self, value):
        vendor, index = value
        return index if vendor is None else {"vendor": vendor, "index": index}


class ReservationCreateSerializer(FieldsOnce, serializers.Serializer):
    """Chosen devices (`host` with `devices` or `whole_host`), or a need (`count`, ...)."""

    host = serializers.CharField(max_length=100, required=False, help_text="A host's name.")
    stack = serializers.CharField(max_length=100, help_text="A driver stack's name.")
    start = AwareDateTimeField()
    end = AwareDateTimeField()
    devices = serializers.ListField(child=DeviceField(), required=False, max_length=256)
    whole_host = serializers.BooleanField(default=False)
    count = serializers.IntegerField(min_value=1, max_value=64, required=False)
    hwspec = serializers.CharField(max_length=64, required=False, allow_blank=True)
    min_memory_gb = serializers.IntegerField(min_value=0, max_value=4096, required=False)
    purpose = serializers.CharField(max_length=200, required=False, allow_blank=True)

    def validate_hwspec(self, value):
        if not value.strip():
            return None
        try:
            return Hwspec.parse(value)
        except InvalidHwspec as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, data):
        chosen = bool(data.get("devices")) or data["whole_host"]
        if chosen and data.get("count"):
            raise serializers.ValidationError(
                "Give either devices (or whole_host) or a count, not both."
            )
        if not chosen and not data.get("count"):
            raise serializers.ValidationError("Give devices, whole_host, or a count of devices.")
        if chosen and not data.get("host"):
            raise serializers.ValidationError({"host": "Chosen devices need their host."})
        if data.get("devices") and data["whole_host"]:
            raise serializers.ValidationError("Give devices or whole_host, not both.")
        # The host and stack with whether one offers the other: one query.
        refs = booking_refs(data.get("host"), data["stack"])
        _refuse_missing(
            host=data.get("host") and refs.host is None and f"No host is named {data['host']}.",
            stack=refs.stack is None and f"No driver stack is named {data['stack']}.",
        )
        return {**data, "host": refs.host, "stack": refs.stack, "offered": refs.offered}


class EndSerializer(serializers.Serializer):
    end = AwareDateTimeField()


# -- Training jobs ------------------------------------------------------------------------------


@extend_schema_field(
    {
        "oneOf": [{"type": "number"}, {"type": "string", "format": "duration"}],
        "description": "Hours (4, 0.5) or an ISO 8601 duration (PT4H, P1DT2H).",
        "example": "PT4H",
    }
)
class WalltimeField(serializers.Field):
    default_error_messages = {
        "invalid": "Give hours as a number, or an ISO 8601 duration such as PT4H.",
    }

    def to_internal_value(self, data):
        if isinstance(data, bool):
            self.fail("invalid")
        try:
            if isinstance(data, int | float):
                hours = float(data)
            elif isinstance(data, str) and data.strip().upper().startswith(("P", "-P", "+P")):
                moment = parse_duration(data.strip().upper())
                if moment is None:
                    self.fail("invalid")
                return moment
            elif isinstance(data, str):
                hours = float(data)
            else:
                self.fail("invalid")
            if not math.isfinite(hours):
                self.fail("invalid")
            return timedelta(hours=hours)
        except (ValueError, OverflowError):
            self.fail("invalid")

    def to_representation(self, value):
        return value / timedelta(hours=1)  # hours, as it is most often given


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Environment variables, NAME: value (in multipart, this object as JSON).",
        "example": {"EPOCHS": "3"},
    }
)
class EnvField(serializers.Field):
    default_error_messages = {"invalid": "An object of NAME: value strings."}

    def to_internal_value(self, data):
        if isinstance(data, str):  # a multipart form sends it as JSON text
            try:
                data = json.loads(data) if data.strip() else {}
            except ValueError:
                self.fail("invalid")
        if not isinstance(data, dict):
            self.fail("invalid")
        return data  # names and values are the service's to check

    def to_representation(self, value):
        return value


class JobSerializer(FieldsOnce, serializers.ModelSerializer):
    project: serializers.SlugRelatedField[PartnerProject] = serializers.SlugRelatedField(
        read_only=True, slug_field="slug"
    )
    submitter: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        read_only=True, slug_field="username"
    )
    stack: serializers.SlugRelatedField[DriverStack] = serializers.SlugRelatedField(
        read_only=True, slug_field="name"
    )
    # None until the scheduler places the job.
    host: serializers.SlugRelatedField[Host] = serializers.SlugRelatedField(
        read_only=True, slug_field="name", allow_null=True
    )
    walltime = serializers.SerializerMethodField()
    env = EnvField(read_only=True)
    input_archive = serializers.SerializerMethodField()
    array = serializers.IntegerField(
        source="array_id", read_only=True, allow_null=True,
        help_text="The id of the array's first job, for a task of an array; else null.",
    )  # fmt: skip
    array_index = serializers.IntegerField(
        read_only=True, allow_null=True, help_text="The task's index in its array, 0..N-1."
    )
    array_size = serializers.IntegerField(
        read_only=True, allow_null=True,
        help_text="N, the number of tasks of the job's array; null for a job in no array.",
    )  # fmt: skip
    array_pending = serializers.IntegerField(
        read_only=True,
        help_text="Of an array's first task: its tasks not written yet (indices "
        "N-array_pending..N-1). As Slurm splits an array's tasks off its one record, a "
        "submission writes the first task and the scheduler's next pass writes the others; "
        "0 once written (or the array cancelled), and for every other job. List the tasks "
        "with GET /api/jobs/?array=<the first task's id>.",
    )
    partition = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "project", "submitter", "name", "script", "stack", "count", "hwspec",
            "min_memory_mib", "walltime", "env", "input_git_url", "input_git_ref",
            "input_archive", "code_licence", "data_licence", "model_freedom", "state",
            "wait_reason", "host", "queued_at", "started_at", "ended_at", "exit_status",
            "requeues", "last_error", "stop_requested", "created", "array", "array_index",
            "array_size", "array_pending", "partition",
        ]  # fmt: skip

    def get_partition(self, job) -> str:
        """The Slurm `cluster/partition` the job runs on; empty: the portal's fleet."""
        # Read from what the query or the submission put in hand (the views select it), never
        # a query per job: a job bound to a cluster has its binding cached, a fleet job none.
        bound = job._state.fields_cache.get("cluster_job")
        if bound is None:
            return ""
        return f"{bound.partition.cluster.name}/{bound.partition.name}"

    def get_walltime(self, job) -> float:
        """Hours."""
        return job.walltime / timedelta(hours=1)

    def get_input_archive(self, job) -> bool:
        """Whether the job's input is an uploaded archive."""
        return bool(job.input_archive)


class JobCreateSerializer(FieldsOnce, serializers.Serializer):
    """A job as job_submit takes it; the service checks the rules and names the field. The
    project and stack are read with the membership and the stack's hosts in one query
    (`submission_refs`, in `validate`), and given to the service with those checks."""

    project = serializers.CharField(
        max_length=100, help_text="The slug of one of your approved partner projects."
    )
    name = serializers.CharField(max_length=100)
    script = serializers.CharField(trim_whitespace=False)
    stack = serializers.CharField(max_length=100, help_text="A driver stack's name.")
    count = serializers.IntegerField(default=1)
    hwspec = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    min_memory_gb = serializers.IntegerField(min_value=0, max_value=4096, default=0)
    walltime = WalltimeField()
    env = EnvField(required=False, default=dict)
    input_git_url = serializers.URLField(
        max_length=200, required=False, allow_blank=True, default=""
    )
    input_git_ref = serializers.CharField(
        max_length=100, required=False, allow_blank=True, default=""
    )
    input_archive = serializers.FileField(required=False, allow_null=True, default=None)
    code_licence = serializers.CharField(max_length=100)
    data_licence = serializers.CharField(max_length=100)
    model_freedom = serializers.ChoiceField(choices=Job.ModelFreedom.choices)
    array = serializers.IntegerField(
        min_value=1, max_value=MAX_ARRAY, required=False, allow_null=True, default=None,
        help_text=f"Submit an array of this many tasks (1 to {MAX_ARRAY}), like sbatch --array: "
        "N jobs alike, each with its `array_index` (0..N-1). The answer is the first task, "
        "with `array_size` N and `array_pending` N-1: as Slurm splits an array's tasks, the "
        "others are written by the scheduler's next pass, then listed by "
        "GET /api/jobs/?array=<its id>. An array bound to a `partition` is written whole.",
    )  # fmt: skip
    partition = serializers.CharField(
        max_length=130, required=False, allow_blank=True, default="",
        help_text="Empty: the portal's fleet. Else a registered Slurm cluster's partition, "
        "`cluster/partition`, where the job's project has a Slurm account (docs/slurm.md).",
    )  # fmt: skip

    def __init__(self, *args, user=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def validate(self, attrs):
        refs = submission_refs(self.user, attrs["project"], attrs["stack"])
        project = refs.project
        theirs = project and project.state == PartnerProject.State.APPROVED and refs.member
        _refuse_missing(
            project=not theirs
            and f"{attrs['project']} is not one of your approved partner projects.",
            stack=refs.stack is None and f"No driver stack is named {attrs['stack']}.",
        )
        return {**attrs, "project": project, "stack": refs.stack, "checks": refs.checks}


class JobLogSerializer(serializers.Serializer):
    offset = serializers.IntegerField(help_text="Where this chunk starts, in characters.")
    next_offset = serializers.IntegerField(help_text="Ask for this offset next.")
    size = serializers.IntegerField(help_text="Characters of log the portal keeps.")
    # The metaclass moves declared fields out of the class, so .data stays the property.
    data = serializers.CharField()  # type: ignore[assignment]
    eof = serializers.BooleanField(help_text="The job has finished and this is the end.")


# -- Package tests ------------------------------------------------------------------------------


class TestRunSerializer(FieldsOnce, serializers.ModelSerializer):
    """A test run of a source package on one hwspec and stack (portal/packages/results.py
    says how its result is read from autopkgtest's exit status)."""

    package = serializers.CharField(source="package.name", read_only=True)
    version = serializers.CharField(source="package.version", read_only=True)
    stack: serializers.SlugRelatedField[DriverStack] = serializers.SlugRelatedField(
        read_only=True, slug_field="name"
    )
    requester: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        read_only=True, slug_field="username", allow_null=True
    )
    job = serializers.IntegerField(source="job_id", read_only=True, allow_null=True)
    state = serializers.SerializerMethodField()

    class Meta:
        model = TestRun
        fields = [
            "id", "package", "version", "hwspec", "stack", "tests", "trigger", "requester",
            "job", "state", "result", "exit_code", "regression", "summary", "created",
            "finished",
        ]  # fmt: skip

    def get_state(self, run) -> str:
        """The state of the run's job (queued, running, succeeded, ...)."""
        return run.job.state if run.job_id else ""


class TestRunCreateSerializer(serializers.Serializer):
    """A package version from an archive (`package`, `version`), or a .dsc at a URL
    (`dsc_url`); optionally one hwspec and stack, else every one that fits."""

    package = serializers.CharField(max_length=100, required=False, default="")
    version = serializers.CharField(max_length=100, required=False, default="")
    dsc_url = serializers.URLField(max_length=500, required=False, default="")
    hwspec = serializers.CharField(max_length=40, required=False, allow_blank=True, default="")
    stack = serializers.SlugRelatedField(
        queryset=DriverStack.objects.all(), slug_field="name", required=False, allow_null=True,
        default=None,
    )  # fmt: skip


class RunStatusSerializer(serializers.Serializer):
    """A run as debci's latest.json says it, with its hwspec and stack."""

    run_id = serializers.IntegerField()
    package = serializers.CharField()
    version = serializers.CharField()
    hwspec = serializers.CharField()
    stack = serializers.CharField()
    status = serializers.CharField(help_text="pass, fail, neutral or tmpfail.")
    regression = serializers.BooleanField()
    trigger = serializers.CharField()
    date = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.IntegerField(allow_null=True)


class PackageVersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    archive = serializers.CharField(allow_null=True, help_text="null: from a .dsc URL.")
    suite = serializers.CharField()
    component = serializers.CharField()
    hwspec = serializers.CharField(help_text="The package's field as written; '' for none.")
    dsc_url = serializers.CharField()
    error = serializers.CharField(help_text="Why its hwspec fields cannot be read; '' if fine.")


class StackFitSerializer(serializers.Serializer):
    stack = serializers.CharField()
    hosts = serializers.IntegerField(help_text="Active hosts with a device and the stack.")


class AlternativeFitSerializer(serializers.Serializer):
    hwspec = serializers.CharField()
    stacks = StackFitSerializer(many=True)


class StanzaSerializer(serializers.Serializer):
    tests = serializers.ListField(child=serializers.CharField(), help_text="[]: every test.")
    hwspec = serializers.CharField()
    restrictions = serializers.ListField(child=serializers.CharField())
    cpu_only = serializers.BooleanField(help_text="Needs no accelerator: not run here.")
    error = serializers.CharField()
    alternatives = AlternativeFitSerializer(many=True)


class PackageSerializer(serializers.Serializer):
    """A source package: its versions, the latest one's test stanzas and what fits them, and
    the latest run per hwspec and stack."""

    name = serializers.CharField()
    versions = PackageVersionSerializer(many=True)
    stanzas = StanzaSerializer(many=True)
    latest = RunStatusSerializer(many=True)
