"""portal/rows.py: the hot paths' one-query reads give back what the ORM would."""

import pytest

from portal.accounts.models import PartnerProject
from portal.booking.services import booking_refs
from portal.inventory.models import DriverStack, Host
from portal.jobs.services import submission_refs
from tests.factories import DriverStackFactory, HostFactory, PartnerMembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def fields(obj) -> dict:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}


def test_a_booking_reads_its_host_and_stack_as_the_orm_does():
    stack = DriverStackFactory(name="rocm-6", hwspecs=["rocm", "opencl"])
    host = HostFactory(name="mi1")
    host.stacks.add(stack)
    refs = booking_refs("mi1", "rocm-6")
    # Converted as a queryset converts: a JSON list is a list on every database, not its text.
    assert refs.stack is not None and refs.stack.hwspecs == ["rocm", "opencl"]
    assert fields(refs.host) == fields(Host.objects.get(pk=host.pk))
    assert fields(refs.stack) == fields(DriverStack.objects.get(pk=stack.pk))
    assert refs.offered and not refs.host._state.adding
    DriverStackFactory(name="cuda-12")
    assert not booking_refs("mi1", "cuda-12").offered  # both exist, not offered there
    missing = booking_refs("nope", "nope")
    assert (missing.host, missing.stack, missing.offered) == (None, None, False)


def test_a_submission_reads_its_project_stack_and_membership_at_once():
    member = PartnerMembershipFactory(project__slug="speech")
    stack = DriverStackFactory(name="rocm-6", hwspecs=["rocm"])
    refs = submission_refs(member.user, "speech", "rocm-6")
    assert fields(refs.project) == fields(PartnerProject.objects.get(slug="speech"))
    assert refs.stack is not None and refs.stack.hwspecs == ["rocm"]
    assert (refs.member, refs.served) == (True, False)  # no host offers it yet
    HostFactory(name="mi1").stacks.add(stack)
    assert submission_refs(member.user, "speech", "rocm-6").served
    retired = HostFactory(name="old", state=Host.State.RETIRED)
    retired.stacks.add(DriverStackFactory(name="oneapi", hwspecs=["sycl"]))
    assert not submission_refs(member.user, "speech", "oneapi").served  # retired hosts serve none
    assert not submission_refs(UserFactory(), "speech", "rocm-6").member
    assert submission_refs(member.user, "nope", "nope").project is None
