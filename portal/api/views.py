from typing import TypeVar

from debian.debian_support import Version
from django import forms
from django.db.models import Q
from django.http import FileResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action, api_view, permission_classes
from rest_framework.exceptions import NotAuthenticated, NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from portal.accounts import services as account_services
from portal.accounts.models import SSHKey, User
from portal.accounts.sshkeys import InvalidKey, parse_public_key
from portal.api.schema import BUSY, CONFLICT, BlockerSerializer, error
from portal.api.serializers import (
    AcceleratorSerializer,
    DriverStackSerializer,
    EndSerializer,
    HostSerializer,
    JobCreateSerializer,
    JobLogSerializer,
    JobSerializer,
    PackageSerializer,
    ReservationCreateSerializer,
    ReservationSerializer,
    SSHKeySerializer,
    TestRunCreateSerializer,
    TestRunSerializer,
)
from portal.booking import services
from portal.booking.availability import Need
from portal.booking.forms import GB, NeedForm
from portal.booking.models import Reservation
from portal.http import client_ip
from portal.inventory import selectors
from portal.inventory.forms import HostFilterForm
from portal.inventory.models import Accelerator, DriverStack, Host
from portal.jobs.models import Job
from portal.jobs.services import job_cancel, job_submit_tasks
from portal.packages import results as package_results
from portal.packages import runs
from portal.packages.models import SourcePackage, TestRun


def _caller(request: Request) -> User:
    """The caller of an operation that IsAuthenticated (the API's default) guards."""
    user = request.user
    if not isinstance(user, User):
        raise NotAuthenticated()
    return user


class HostViewSet(viewsets.ReadOnlyModelViewSet):
    """Hosts and their accelerators. Filters as on the host list page."""

    serializer_class = HostSerializer
    permission_classes = [permissions.AllowAny]
    lookup_field = "name"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Host.objects.none()
        kwargs = _query_form(HostFilterForm, self.request).selector_kwargs()
        if self.action == "retrieve":
            kwargs["include_retired"] = True
        return selectors.host_list(**kwargs)


class AcceleratorViewSet(viewsets.ReadOnlyModelViewSet):
    """Accelerators of hosts in service; `?host=<name>` narrows to one host."""

    serializer_class = AcceleratorSerializer
    permission_classes = [permissions.AllowAny]

    def get_queryset(self):
        found = Accelerator.objects.exclude(host__state=Host.State.RETIRED).select_related("host")
        if name := self.request.query_params.get("host"):
            found = found.filter(host__name=name)
        return found.order_by("host__name", "index")


class DriverStackViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = DriverStackSerializer
    permission_classes = [permissions.AllowAny]
    queryset = DriverStack.objects.all()
    lookup_field = "name"


class SSHKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The caller's own SSH public keys."""

    serializer_class = SSHKeySerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return SSHKey.objects.none()
        return _caller(self.request).ssh_keys.all()

    @extend_schema(
        responses={
            201: SSHKeySerializer,
            409: error("The key is registered already, or the caller has too many keys."),
        }
    )
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            key = parse_public_key(serializer.validated_data["public_key"])
        except InvalidKey as exc:
            raise ValidationError({"public_key": [exc.message]}, code="invalid_key") from None
        ssh_key = account_services.ssh_key_add(user=request.user, key=key)
        return Response(self.get_serializer(ssh_key).data, status=status.HTTP_201_CREATED)


AnyForm = TypeVar("AnyForm", bound=forms.Form)


def _query_form(form_class: type[AnyForm], request: Request) -> AnyForm:
    form = form_class(request.query_params)
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        # An ErrorList yields its messages as text.
        raise ValidationError({field: [str(message) for message in errors]})
    return form


class ExtensionBlockerSerializer(BlockerSerializer):
    # Every blocker of an extension is someone else's or another of yours. None removes the
    # inherited field (DRF's way, which the stubs do not know).
    yours = None  # type: ignore[assignment]


class ExtensionSerializer(serializers.Serializer):
    latest_end = serializers.DateTimeField()
    reason = serializers.CharField()
    blockers = ExtensionBlockerSerializer(many=True)


class SlotSerializer(serializers.Serializer):
    host = serializers.CharField(source="host.name")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    free = serializers.IntegerField()


@extend_schema(
    parameters=[
        OpenApiParameter(name, str, description=str(field.help_text or field.label))
        for name, field in NeedForm.base_fields.items()
    ],
    responses=SlotSerializer(many=True),
)
@api_view(["GET"])
@permission_classes([permissions.AllowAny])
def availability_view(request):
    """The earliest slot of each host that meets a need, soonest first."""
    form = _query_form(NeedForm, request)
    slots = form.slots()
    return Response(SlotSerializer(slots, many=True).data)


# What a change of a reservation answers: the reservation as it is now, or why not.
CHANGED = {200: ReservationSerializer, 409: CONFLICT, 503: BUSY}


class ReservationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's reservations: book, list, show, extend, shorten, end now, cancel.

    `?when=upcoming|current|past` filters the list. Someone else's reservation is not found.
    """

    serializer_class = ReservationSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Reservation.objects.none()
        mine = Reservation.objects.filter(user=_caller(self.request))
        now = timezone.now()
        when = self.request.query_params.get("when", "")
        if self.action == "list" and when:
            open_ = Q(state__in=Reservation.OPEN, end__gt=now)
            chosen = {
                "upcoming": open_ & Q(start__gt=now),
                "current": open_ & Q(start__lte=now),
                "past": ~open_,
            }.get(when)
            if chosen is None:
                raise ValidationError({"when": ["Use upcoming, current or past."]})
            mine = mine.filter(chosen)
        return mine.select_related("host", "stack", "user").prefetch_related(
            "allocations__accelerator__host"
        )

    def _done(self, reservation, status_code=status.HTTP_200_OK):
        reservation = self.get_queryset().get(pk=reservation.pk)
        return Response(self.get_serializer(reservation).data, status=status_code)

    @extend_schema(
        request=ReservationCreateSerializer,
        responses={201: ReservationSerializer, 409: CONFLICT, 503: BUSY},
    )
    def create(self, request):
        body = ReservationCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        common = {
            "user": request.user, "start": data["start"], "end": data["end"],
            "purpose": data.get("purpose", ""), "ip": client_ip(request),
        }  # fmt: skip
        if data.get("count"):
            gb = data.get("min_memory_gb")
            need = Need(
                count=data["count"], hwspec=data.get("hwspec"), stack=data["stack"],
                min_memory_mib=gb * GB if gb else 0,
            )  # fmt: skip
            made = services.reservation_create_for_need(need=need, host=data.get("host"), **common)
        else:
            host = data["host"]
            made = services.reservation_create(
                host=host, stack=data["stack"], whole_host=data["whole_host"],
                devices=data.get("devices", []), offered=data["offered"],
                **common,
            )  # fmt: skip
        # Built from the objects in hand: the service gives the new reservation its
        # allocations and their accelerators, so nothing is read back.
        return Response(self.get_serializer(made).data, status=status.HTTP_201_CREATED)

    def _change(self, request, change, **kwargs):
        reservation = self.get_object()
        changed = change(
            reservation=reservation, actor=request.user, ip=client_ip(request), **kwargs
        )
        return self._done(changed)

    def _new_end(self, request):
        body = EndSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return body.validated_data["end"]

    @extend_schema(responses=ExtensionSerializer)
    @action(detail=True, methods=["get"])
    def extension(self, request, pk=None):
        """How far the reservation can be extended, and what stops it there."""
        reservation = self.get_object()
        latest, reason, blockers = services.extension_limit(reservation)
        return Response(
            {
                "latest_end": latest,
                "reason": reason,
                "blockers": [{"host": b.accelerator.host.name, "index": b.accelerator.index,
                              "start": b.start, "end": b.end} for b in blockers],
            }
        )  # fmt: skip

    @extend_schema(request=EndSerializer, responses=CHANGED)
    @action(detail=True, methods=["post"])
    def extend(self, request, pk=None):
        return self._change(request, services.reservation_extend, end=self._new_end(request))

    @extend_schema(request=EndSerializer, responses=CHANGED)
    @action(detail=True, methods=["post"])
    def shorten(self, request, pk=None):
        return self._change(request, services.reservation_shorten, end=self._new_end(request))

    @extend_schema(request=None, responses=CHANGED)
    @action(detail=True, methods=["post"])
    def end(self, request, pk=None):
        return self._change(request, services.reservation_end_now)

    @extend_schema(request=None, responses=CHANGED)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._change(request, services.reservation_cancel)


@extend_schema(responses={200: dict})
@api_view(["GET"])
@permission_classes([permissions.IsAdminUser])
def ansible_inventory_view(request):
    """Staff: every host not retired as an Ansible inventory (ansible/inventory/portal.py).

    Groups: `porterbox` (all), the vendors of each host's devices (`nvidia`, `amd`, `intel`,
    `fpga`), `stack_<name>` per stack and `state_<state>`; host variables say where to reach a
    host and carry its pinned SSH host keys, so Ansible trusts the same keys as the portal,
    and its device map (`porterbox_devices`, `porterbox_shared_nodes`) as its agent reported it.
    """
    hosts = (
        Host.objects.exclude(state=Host.State.RETIRED)
        .prefetch_related("stacks", "accelerators")
        .order_by("name")
    )
    groups: dict[str, list[str]] = {"porterbox": []}
    hostvars: dict[str, dict[str, object]] = {}
    for host in hosts:
        vendors = {a.vendor for a in host.accelerators.all() if not a.retired}
        stacks = [s.name for s in host.stacks.all()]
        names = ["porterbox", *sorted(vendors), f"state_{host.state}"]
        names += [f"stack_{s.replace('-', '_').replace('.', '_')}" for s in stacks]
        for group in names:
            groups.setdefault(group, []).append(host.name)
        hostvars[host.name] = {
            "ansible_host": host.fqdn,
            "ansible_port": host.ssh_port,
            "porterbox_state": host.state,
            "porterbox_stack_names": stacks,
            "porterbox_host_keys": [k for k in host.host_keys.splitlines() if k.strip()],
        }
        # The device map the host's agent reported: a playbook run from this inventory writes
        # the agent's configuration, and a run without the map would empty it. A host that
        # never reported one gets none (the role then keeps what the host has).
        if host.device_nodes:
            hostvars[host.name]["porterbox_devices"] = host.device_nodes
        if host.shared_nodes:
            hostvars[host.name]["porterbox_shared_nodes"] = host.shared_nodes
    inventory: dict[str, dict[str, object]] = {
        group: {"hosts": members} for group, members in sorted(groups.items())
    }
    inventory["_meta"] = {"hostvars": hostvars}
    return Response(inventory)


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@permission_classes([permissions.AllowAny])
def not_found_view(request):
    raise NotFound(f"No API operation at {request.path}.")


# -- Training jobs ------------------------------------------------------------------------------

# The service's field names -> the API's, where they differ.
API_FIELD = {"min_memory_mib": "min_memory_gb"}
LOG_LIMIT = 1024 * 1024  # characters of log in one answer


FINISHED = error("The job has finished already.")


class TarGzRenderer(BaseRenderer):
    """A job's output (application/gzip); its refusals are the API's JSON all the same."""

    media_type = "application/gzip"
    format = "tar.gz"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data)


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Training jobs of the caller's partner projects (staff: every job).

    Submit with JSON, or multipart to upload an input archive (.tar.gz); `walltime` is hours or
    an ISO 8601 duration. `?state=`, `?project=<slug>` and `?array=<id>` (the tasks of the array
    whose first task is that job) filter the list. A job of a project the caller does not belong
    to is not found.
    """

    service_fields = API_FIELD  # a refusal's field in the API's name (portal/api/errors.py)

    serializer_class = JobSerializer
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Job.objects.none()
        jobs = Job.objects.select_related(
            "project", "submitter", "stack", "host", "cluster_job__partition__cluster"
        ).defer("log")
        user = _caller(self.request)
        if not user.is_staff:
            jobs = jobs.filter(project__partnermembership__user=user)
        if self.action == "list":
            params = self.request.query_params
            if state := params.get("state"):
                if state not in Job.State.values:
                    raise ValidationError({"state": [f"Use one of {', '.join(Job.State.values)}."]})
                jobs = jobs.filter(state=state)
            if project := params.get("project"):
                jobs = jobs.filter(project__slug=project)
            if (array := params.get("array")) is not None:
                if not (array.isascii() and array.isdigit() and len(array) <= 18):
                    raise ValidationError({"array": ["Use the id of an array's first task."]})
                # By index, for the tasks of an array: ?array=<id>&... reads them in order.
                return jobs.filter(array=int(array)).order_by("array_index")
        return jobs.order_by("-queued_at", "-pk")

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=Job.State.values),
            OpenApiParameter("project", str, description="A project's slug."),
            OpenApiParameter(
                "array",
                int,
                description="The id of an array's first task: its tasks, by index (those the "
                "scheduler's pass has written; see `array_pending`).",
            ),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=JobCreateSerializer, responses={201: JobSerializer})
    def create(self, request):
        """Submit a job, or an array of jobs (`array`: N); the answer is the job, or the array's
        first task: its `array_size` is N, its `array_pending` the tasks the scheduler's next
        pass writes (as Slurm splits an array's tasks), listed then by `?array=<its id>`."""
        body = JobCreateSerializer(data=request.data, user=request.user)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        data["min_memory_mib"] = data.pop("min_memory_gb") * GB
        jobs = job_submit_tasks(submitter=request.user, **data)
        # Built from the objects in hand (project, stack, submitter are the body's).
        answer = JobSerializer(jobs[0])
        return Response(answer.data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={(200, "application/gzip"): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"], renderer_classes=[JSONRenderer, TarGzRenderer])
    def output(self, request, pk=None):
        """What the job left in $PORTERBOX_OUTPUT, as the portal fetched it when it ended (a
        .tar.gz); 404 while it runs or when it kept none."""
        job = self.get_object()
        if not job.output:
            raise NotFound("This job kept no output (yet).")
        return FileResponse(
            job.output.open("rb"), as_attachment=True, filename=f"job-{job.pk}-output.tar.gz",
            content_type="application/gzip",
        )  # fmt: skip

    @extend_schema(
        parameters=[
            OpenApiParameter("offset", int, description="Characters to skip (default 0)."),
            OpenApiParameter("limit", int, description=f"At most this many (<= {LOG_LIMIT})."),
        ],
        responses=JobLogSerializer,
    )
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        """The job's output as the portal keeps it (its last JOBS_MAX_LOG_KB KiB), from `offset`.

        Poll with `next_offset` until `eof`. Offsets count characters from the log's very
        start; the portal keeps the tail, so an offset before it starts where the kept text does.
        """
        job = self.get_object()
        offset = _non_negative(request, "offset", 0)
        limit = min(_non_negative(request, "limit", LOG_LIMIT), LOG_LIMIT)
        text, dropped = Job.objects.values_list("log", "log_dropped").get(pk=job.pk)
        start = min(max(offset - dropped, 0), len(text))
        data = text[start : start + limit]
        end = start + len(data)
        return Response(
            {
                "offset": dropped + start,
                "next_offset": dropped + end,
                "size": dropped + len(text),
                "data": data,
                "eof": job.state in Job.FINISHED and end == len(text),
            }
        )

    @extend_schema(
        request=None,
        parameters=[
            OpenApiParameter(
                "array",
                int,
                enum=[0, 1],
                description="1: cancel every task of the job's array that has not finished.",
            )
        ],
        responses={200: JobSerializer, 409: FINISHED},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel a waiting or scheduled job; a running one is stopped (SIGTERM, then SIGKILL).

        With `?array=1`, every task of the job's array that has not finished."""
        whole_array = request.query_params.get("array", "0")
        if whole_array not in ("0", "1"):
            raise ValidationError({"array": ["Use 1 to cancel the whole array, or 0."]})
        job = self.get_object()
        job = job_cancel(job=job, actor=request.user, whole_array=whole_array == "1")
        return Response(self.get_serializer(self.get_queryset().get(pk=job.pk)).data)


def _non_negative(request, name: str, default: int) -> int:
    text = request.query_params.get(name, "")
    if not text:
        return default
    if not text.isdigit() or len(text) > 15:
        raise ValidationError({name: ["A whole number, 0 or more."]})
    return int(text)


# -- Package tests ------------------------------------------------------------------------------


class TestRunViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """Test runs of source packages (autopkgtest on matching hardware), newest first; `?package=`
    and `?result=` filter the list. Every logged-in caller sees them; Debian members ask for
    them: a package version from an archive, or a .dsc at a URL (fetched, its files checked
    against its SHA256s), on every hwspec and stack that fits or on the one asked for."""

    serializer_class = TestRunSerializer

    def get_queryset(self):
        found = TestRun.objects.select_related("package", "stack", "requester", "job").defer(
            "job__log"
        )
        if self.action == "list":
            params = self.request.query_params
            if name := params.get("package"):
                found = found.filter(package__name=name)
            if (result := params.get("result")) is not None:
                if result not in (*TestRun.Result.values, "pending"):
                    raise ValidationError(
                        {"result": [f"Use one of {', '.join(TestRun.Result.values)} or pending."]}
                    )
                found = found.filter(result="" if result == "pending" else result)
        return found.order_by("-created", "-pk")

    @extend_schema(
        parameters=[
            OpenApiParameter("package", str, description="A source package's name."),
            OpenApiParameter("result", str, enum=[*TestRun.Result.values, "pending"]),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=TestRunCreateSerializer, responses={201: TestRunSerializer(many=True)})
    def create(self, request):
        """Queue runs; the answer lists every run queued (one per hwspec and stack). A request
        that cannot be queued says why: no host fits, the hwspec is not the package's, the
        stack does not serve it, the files cannot be fetched."""
        user = _caller(request)
        if not user.is_debian_member:
            raise PermissionDenied("Only Debian members ask for test runs; ask staff for access.")
        body = TestRunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        made = runs.request_runs(requester=user, **body.validated_data)
        return Response(TestRunSerializer(made, many=True).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=PackageSerializer)
@api_view(["GET"])
def package_view(request, name: str):
    """A source package: its versions, the latest version's test stanzas with the stacks and
    hosts that fit each hwspec alternative, and its latest run per hwspec and stack."""
    versions = list(SourcePackage.objects.filter(name=name).select_related("archive"))
    if not versions:
        raise NotFound(f"No package src:{name[:100]} is known here.")
    latest = max(versions, key=lambda p: Version(p.version))
    fits = runs.matching(latest)
    recorded = package_results.latest_results([name]).get(name, {})
    body = {
        "name": name,
        "versions": [
            {
                "version": p.version,
                "archive": p.archive.name if p.archive else None,
                "suite": p.suite,
                "component": p.component,
                "hwspec": p.hwspec,
                "dsc_url": p.dsc_url,
                "error": p.error,
            }
            for p in versions
        ],
        "stanzas": [
            {
                "tests": f.tests,
                "hwspec": f.hwspec,
                "restrictions": f.restrictions,
                "cpu_only": f.cpu_only,
                "error": f.error,
                "alternatives": [
                    {
                        "hwspec": str(a.hwspec),
                        "stacks": [{"stack": s.stack.name, "hosts": s.hosts} for s in a.stacks],
                    }
                    for a in f.alternatives
                ],
            }
            for f in fits
        ],
        "latest": [package_results.status_of(r) for _, r in sorted(recorded.items())],
    }
    return Response(PackageSerializer(body).data)
