"""Scheduled device health checks against the real test host (portal/operations/checks.py).

The host's agent runs the check its own hostctl.json names, in a throwaway schroot of the
stack, with only the checked device visible.
"""

import json

import pytest
from django.utils import timezone

from portal.inventory.models import HealthCheck, Host
from portal.operations import checks, services
from tests.helpers import delivered
from tests.operations.conftest import book_now

pytestmark = [pytest.mark.host, pytest.mark.django_db(transaction=True)]

CONFIG = "/etc/porterbox/hostctl.json"
PASSING = ["/bin/sh", "-c", 'test -n "$CUDA_VISIBLE_DEVICES" && echo checked $CUDA_VISIBLE_DEVICES']
FAILING = ["/bin/sh", "-c", "echo uncorrected ECC errors: 3 >&2; exit 4"]


@pytest.fixture
def health_checks(testhost, settings):
    """Set the host agent's health checks; the host's own configuration again afterwards."""
    settings.ADMINS = [("Admins", "admins@example.org")]
    original = testhost.read_file(CONFIG)

    def configure(checks_: dict) -> None:
        testhost.write_file(CONFIG, json.dumps({**json.loads(original), "health_checks": checks_}))

    yield configure
    testhost.write_file(CONFIG, original)


def test_a_passing_check_is_recorded_and_the_host_stays_in_service(registered, health_checks):
    health_checks({"nvidia": PASSING})

    done = checks.run_checks(timezone.now())

    row = HealthCheck.objects.get()
    assert (row.host, row.accelerator.index, row.stack.name) == (registered, 0, "cuda-12")
    assert (row.passed, row.exit_status) == (True, 0)
    assert row.output.strip() == "checked 0"
    assert row.finished is not None
    assert done == ["testhost: nvidia #0 passed"]
    registered.refresh_from_db()
    assert registered.state == Host.State.ACTIVE and registered.health_problems == []


def test_a_failing_check_drains_the_host_and_tells_the_admins(registered, health_checks):
    health_checks({"nvidia": FAILING})
    delivered().clear()

    checks.run_checks(timezone.now())

    row = HealthCheck.objects.get()
    assert (row.passed, row.exit_status) == (False, 4)
    assert "uncorrected ECC errors: 3" in row.output
    registered.refresh_from_db()
    assert registered.state == Host.State.MAINTENANCE
    assert [p["code"] for p in registered.health_problems] == ["health_check"]
    assert "nvidia #0" in registered.drain_reason and "exit status 4" in registered.drain_reason
    [drained] = [m for m in delivered() if "drained" in m.subject]
    assert drained.to == ["admins@example.org"]
    assert "uncorrected ECC errors: 3" in drained.body

    # A drained host is not checked again until staff resume it.
    assert checks.run_checks(timezone.now()) == []
    assert HealthCheck.objects.count() == 1


def test_it_keeps_a_failed_checks_problem_through_the_next_telemetry_pass(
    registered, health_checks, settings
):
    settings.PORTAL_TELEMETRY_SECONDS = 0  # the loop reads the devices on this pass
    health_checks({"nvidia": FAILING})
    checks.run_checks(timezone.now())

    services.reconcile_host(registered.pk)  # the readings are fine

    registered.refresh_from_db()
    assert registered.telemetry_at is not None and registered.telemetry["samples"]
    assert [p["code"] for p in registered.health_problems] == ["health_check"]
    assert registered.state == Host.State.MAINTENANCE
    assert registered.drain_cause == Host.DrainCause.HEALTH_CHECK


def test_a_device_held_by_a_reservation_is_skipped_for_a_free_one(
    registered, health_checks, person
):
    health_checks({"nvidia": PASSING})
    book_now(person("alice"), registered, [0])

    checks.run_checks(timezone.now())

    row = HealthCheck.objects.get()
    assert row.accelerator.index == 1 and row.passed is True
    assert row.output.strip() == "checked 1"


def test_a_vendor_without_a_configured_check_is_recorded_as_not_run(registered, health_checks):
    health_checks({})

    checks.run_checks(timezone.now())

    row = HealthCheck.objects.get()
    assert row.passed is None and row.output.startswith("Not run:")
    registered.refresh_from_db()
    assert registered.state == Host.State.ACTIVE
