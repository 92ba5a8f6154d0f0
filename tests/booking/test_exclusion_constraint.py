"""On PostgreSQL the database itself refuses an accelerator allocated twice."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, transaction

from portal.booking.models import Allocation, Reservation
from tests.factories import AcceleratorFactory, DriverStackFactory, UserFactory

pytestmark = pytest.mark.postgres
T = datetime(2026, 12, 1, 10, tzinfo=UTC)
H = timedelta(hours=1)


@pytest.fixture
def reservation(db):
    acc = AcceleratorFactory()
    return Reservation.objects.create(
        user=UserFactory(), host=acc.host, stack=DriverStackFactory(), start=T, end=T + 4 * H
    ), acc


def test_it_refuses_an_overlapping_allocation_written_behind_the_services_back(reservation):
    r, acc = reservation
    Allocation.objects.create(accelerator=acc, reservation=r, start=T, end=T + 2 * H)
    with pytest.raises(IntegrityError, match="allocation_no_overlap"), transaction.atomic():
        Allocation.objects.create(accelerator=acc, reservation=r, start=T + H, end=T + 3 * H)


def test_it_allows_touching_ranges_and_inactive_overlaps(reservation):
    r, acc = reservation
    Allocation.objects.create(accelerator=acc, reservation=r, start=T, end=T + 2 * H)
    Allocation.objects.create(accelerator=acc, reservation=r, start=T + 2 * H, end=T + 3 * H)
    Allocation.objects.create(accelerator=acc, reservation=r, start=T, end=T + H, active=False)
    assert Allocation.objects.count() == 3
