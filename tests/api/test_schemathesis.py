"""Schemathesis against the schema the portal serves: every operation, as a Debian member and
as staff (API tokens), answers what its schema says: never a 5xx, only documented status codes
and content types, and bodies that match their declared shape (issue 14).

The requests go through portal.wsgi.application in this process, so they see the test
database; the first CI pass runs it on PostgreSQL, where NUL bytes and integer overflows show.
"""

import os
import time
from datetime import timedelta

import hypothesis
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.utils import timezone
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.throttling import SimpleRateThrottle
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portal.accounts import services as accounts
from portal.accounts.sshkeys import parse_public_key
from portal.booking import services as booking
from portal.booking.models import BookingPolicy
from portal.jobs.models import Job
from portal.wsgi import application
from tests.factories import (
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    PartnerMembershipFactory,
    UserFactory,
)
from tests.keys import ed25519_line

pytestmark = pytest.mark.once

# Per operation and caller: 1,250 requests in all. SCHEMATHESIS_EXAMPLES=500 digs deeper, with
# new random cases on every run; CI's run draws the same cases every time.
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def wsgi_in_test_transaction():
    """The WSGI handler closes the database connection around each request; the test's
    transaction (and its data) lives on that connection: keep it, as Django's test client does."""
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield application
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def world(db, monkeypatch, settings):
    """What the path ids point at: a host with devices and a stack, a project with its member,
    a reservation each (the member's followed by staff's on the same device, so an extension
    meets a blocker) and jobs (one queued, with no host yet; one running on the host)."""
    # Throttling is documented (429); counted here, it would end the run's coverage early.
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost"]  # schemathesis' WSGI host
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": None, "user": None})
    stack = DriverStackFactory(name="cuda-12")
    host = HostFactory(name="gpu1")
    host.stacks.add(stack)
    devices = [AcceleratorFactory(host=host, index=i) for i in range(2)]
    member = UserFactory(username="alice", debian_member_source="salsa")
    staff = UserFactory(
        username="root", is_staff=True, is_superuser=True, debian_member_source="staff"
    )
    membership = PartnerMembershipFactory(user=member)
    step = BookingPolicy.current().granularity
    start = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    ids = {"host": host.name, "stack": stack.name, "accelerator": devices[0].pk}
    for user in (member, staff):
        reservation = booking.reservation_create(
            user=user, host=host, stack=stack, start=start, end=start + 4 * step,
            accelerators=devices[:1] if user == member else devices[1:],
        )  # fmt: skip
        ids[f"reservation_{user.username}"] = reservation.pk
        key = accounts.ssh_key_add(user=user, key=parse_public_key(ed25519_line()))
        ids[f"key_{user.username}"] = key.pk
    booking.reservation_create(
        user=staff, host=host, stack=stack, start=start + 6 * step, end=start + 8 * step,
        accelerators=devices[:1],
    )  # fmt: skip
    queued = JobFactory(project=membership.project, submitter=member, stack=stack)
    JobFactory(
        project=membership.project, submitter=member, stack=stack, host=host,
        state=Job.State.RUNNING, started_at=timezone.now(), log="step 1\nstep 2\n",
    )  # fmt: skip
    ids["job"] = queued.pk
    at = lambda n: (start + n * step).isoformat()  # noqa: E731
    bodies = {
        "POST /api/reservations/": [
            {"host": host.name, "stack": stack.name, "devices": [1], "start": at(10),
             "end": at(12)},  # made once, then a conflict with the caller's own
            {"count": 1, "hwspec": "cuda", "stack": stack.name, "start": at(10), "end": at(11)},
        ],
        "POST /api/reservations/{id}/extend/": [{"end": at(5)}, {"end": at(10)}],
        "POST /api/reservations/{id}/shorten/": [{"end": at(3)}],
        "POST /api/ssh-keys/": [{"public_key": ed25519_line()}],
        "POST /api/jobs/": [
            {"project": membership.project.slug, "name": "train", "script": "python3 t.py",
             "stack": stack.name, "walltime": "PT1H", "code_licence": "MIT",
             "data_licence": "CC0-1.0", "model_freedom": "free"},
        ],
    }  # fmt: skip
    # Real names put into made-up bodies, so the rest of a body reaches the service's rules.
    names = {
        "POST /api/reservations/": {"host": host.name, "stack": stack.name},
        "POST /api/jobs/": {"project": membership.project.slug, "stack": stack.name},
    }
    return {"member": member, "staff": staff, "ids": ids, "bodies": bodies, "names": names}


def _with_names(case, names: dict):
    if isinstance(case.body, dict):
        case.body = {**case.body, **names}
    return case


def _real_ids(path: str, ids: dict, username: str) -> dict:
    """Path parameters that reach the caller's own objects, for an operation's path."""
    if "{name}" in path:
        return {"name": ids["host"] if path.startswith("/api/hosts/") else ids["stack"]}
    if "{id}" not in path:
        return {}
    if path.startswith("/api/reservations/"):
        return {"id": ids[f"reservation_{username}"]}
    if path.startswith("/api/ssh-keys/"):
        return {"id": ids[f"key_{username}"]}
    if path.startswith("/api/jobs/"):
        return {"id": ids["job"]}
    return {"id": ids["accelerator"]}


@pytest.mark.parametrize("role", ["member", "staff"])
def test_it_answers_every_operation_as_its_schema_says(
    world, wsgi_in_test_transaction, role, capsys
):
    user = world[role]
    headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_in_test_transaction)
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    began = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        real = _real_ids(operation.path, world["ids"], user.username)
        # Valid and invalid requests; a third reach real objects, the rest try whatever ids
        # Hypothesis makes up.
        cases = [
            operation.as_strategy(),
            operation.as_strategy(path_parameters=real) if real else operation.as_strategy(),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        # And bodies that the services accept (or refuse for a reason of their own: a
        # conflict, a policy), which made-up values almost never reach.
        key = f"{operation.method.upper()} {operation.path}"
        if names := world["names"].get(key):
            cases.append(operation.as_strategy().map(lambda case, n=names: _with_names(case, n)))
        for body in world["bodies"].get(key, []):
            cases.append(
                operation.as_strategy(
                    path_parameters=real, body=body, media_type="application/json"
                )
            )

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize="SCHEMATHESIS_EXAMPLES" not in os.environ,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=st.one_of(cases))
        def answers_as_documented(case):
            label = case.operation.label
            counts[label] = counts.get(label, 0) + 1
            answer = case.call_and_validate(headers=headers, checks=CHECKS)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

        answers_as_documented()
    summary = (
        f"schemathesis as {role}: {sum(counts.values())} cases over {len(counts)} operations "
        f"in {time.monotonic() - began:.1f}s; answers: "
        + ", ".join(f"{code}x{n}" for code, n in sorted(statuses.items()))
    )
    with capsys.disabled():  # shown in CI's log, which runs without -s
        print(f"\n{summary}")
    assert len(counts) >= 25, summary
