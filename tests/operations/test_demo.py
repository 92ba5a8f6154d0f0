import json
from io import StringIO

from django.core.management import call_command

from portal.accounts.models import User
from portal.inventory.models import Accelerator, Host


def dump() -> str:
    out = StringIO()
    call_command("dumpdata", "inventory", "accounts", indent=0, stdout=out)
    return out.getvalue()


def test_it_loads_a_believable_inventory_of_every_vendor(db):
    call_command("demo", stdout=StringIO())
    assert set(Accelerator.objects.values_list("vendor", flat=True)) == {
        "nvidia",
        "amd",
        "intel",
        "fpga",
    }
    assert Accelerator.objects.filter(model="NVIDIA H100 80GB HBM3", memory_mib=81559).count() == 4
    assert Host.objects.filter(state=Host.State.MAINTENANCE).exists()
    roles = {tuple(u.roles) for u in User.objects.all()}
    assert {("Debian member",), ("partner member",), ("Debian member", "staff")} <= roles


def test_it_changes_nothing_when_run_twice(db):
    call_command("demo", stdout=StringIO())
    first = dump()
    out = StringIO()
    call_command("demo", stdout=out)
    assert dump() == first
    assert "0 object(s) created" in out.getvalue()
    assert json.loads(first)


def test_it_keeps_what_an_admin_edited_between_runs(db):
    call_command("demo", stdout=StringIO())
    Host.objects.filter(name="nv-t4-01").update(state=Host.State.ACTIVE)
    call_command("demo", stdout=StringIO())
    assert Host.objects.get(name="nv-t4-01").state == Host.State.ACTIVE


def test_it_books_a_few_slots_so_the_timelines_show_something(db):
    from portal.booking.models import Reservation

    call_command("demo", stdout=StringIO())
    assert Reservation.objects.filter(purpose="demo").count() == 3
    assert Reservation.objects.get(host__name="amd-mi210-01").whole_host
    call_command("demo", stdout=StringIO())
    assert Reservation.objects.count() == 3


def test_it_gives_one_host_a_day_of_readings_so_its_charts_show_something(db):
    from portal.inventory.models import DeviceSample

    call_command("demo", stdout=StringIO())
    readings = DeviceSample.objects.filter(accelerator__host__name="nv-a100-01")
    assert readings.count() == 4 * 144
    assert readings.filter(utilization_pct__gt=50).exists()
    call_command("demo", stdout=StringIO())
    assert DeviceSample.objects.count() == 4 * 144
