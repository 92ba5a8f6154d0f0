"""The host list filters, on the page, in the API and in the selector."""

import pytest
from django.urls import reverse

from portal.inventory.models import Accelerator, DriverStack, Host
from tests.factories import AcceleratorFactory, DriverStackFactory, HostFactory


@pytest.fixture
def fleet(db):
    cuda = DriverStackFactory(name="cuda-12", hwspecs=["cuda"], area="non-free")
    rocm = DriverStackFactory(name="rocm-6", hwspecs=["rocm"], area="main")
    opencl = DriverStackFactory(name="opencl", hwspecs=["opencl"], area="main")
    oneapi = DriverStackFactory(name="oneapi", hwspecs=["sycl"], area="non-free")

    def host(name, stacks, devices, **kw):
        h = HostFactory(name=name, **kw)
        h.stacks.set(stacks)
        for i, (vendor, model, mib, arch) in enumerate(devices):
            AcceleratorFactory(
                host=h, index=i, vendor=vendor, model=model, memory_mib=mib, arch=arch
            )
        return h

    host("h100", [cuda, opencl], [("nvidia", "H100", 81559, "sm_90")] * 2)
    host("t4", [cuda], [("nvidia", "Tesla T4", 15360, "sm_75")])
    host("mi210", [rocm, opencl], [("amd", "MI210", 65536, "gfx90a")])
    host("rx6700", [rocm], [("amd", "RX 6700 XT", 12288, "gfx1031")])
    host("flex", [oneapi], [("intel", "Flex 170", 16384, "dg2")])
    # A host with a small NVIDIA card and a large AMD card: filters hold per device.
    host(
        "mixed", [cuda, rocm], [("nvidia", "T4", 15360, "sm_75"), ("amd", "MI210", 65536, "gfx90a")]
    )
    host("old", [cuda], [("nvidia", "H100", 81559, "sm_90")], state=Host.State.RETIRED)
    # An NVIDIA card but no CUDA stack: it cannot serve cuda.
    host("bare", [], [("nvidia", "A100", 40960, "sm_80")])


def names(response):
    return sorted(h["name"] for h in response.json()["results"])


def page_names(response):
    return sorted(h.name for h in response.context["hosts"])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["bare", "flex", "h100", "mi210", "mixed", "rx6700", "t4"]),
        ("vendor=amd", ["mi210", "mixed", "rx6700"]),
        ("hwspec=cuda", ["h100", "mixed", "t4"]),
        ("hwspec=cuda:sm_90", ["h100"]),
        ("hwspec=rocm:gfx1031", ["rx6700"]),
        ("hwspec=opencl", ["h100", "mi210"]),
        ("hwspec=sycl", ["flex"]),
        ("hwspec=cpu", ["bare", "flex", "h100", "mi210", "mixed", "rx6700", "t4"]),
        ("min_memory_gb=40", ["bare", "h100", "mi210", "mixed"]),
        ("vendor=nvidia&min_memory_gb=40", ["bare", "h100"]),
        ("hwspec=cuda&min_memory_gb=40", ["h100"]),
        ("stack=rocm-6", ["mi210", "mixed", "rx6700"]),
        ("free_only=on", ["h100", "mi210", "mixed", "rx6700"]),
        ("free_only=on&hwspec=cuda", []),
        ("free_only=on&vendor=nvidia", ["h100", "mixed"]),
    ],
)
def test_it_filters_hosts_on_the_page_and_in_the_api(client, fleet, query, expected):
    page = client.get(reverse("inventory:host_list") + "?" + query)
    assert page.status_code == 200
    assert page_names(page) == expected
    api = client.get(reverse("api:host-list") + "?" + query)
    assert api.status_code == 200
    assert names(api) == expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("hwspec=tpu", "Unknown hardware spec"),
        ("min_memory_gb=-1", "greater than or equal to 0"),
        ("min_memory_gb=lots", "Enter a whole number"),
        ("vendor=acme", "Select a valid choice"),
        ("stack=nope", "Select a valid choice"),
    ],
)
def test_it_answers_bad_filters_with_a_clear_400(client, fleet, query, message):
    page = client.get(reverse("inventory:host_list") + "?" + query)
    assert page.status_code == 400
    assert message in page.content.decode()
    api = client.get(reverse("api:host-list") + "?" + query)
    assert api.status_code == 400
    assert message in api.json()["message"]


def test_it_shows_a_host_with_its_devices_stacks_and_hwspecs(client, fleet):
    response = client.get(reverse("inventory:host_detail", args=["h100"]))
    body = response.content.decode()
    assert response.status_code == 200
    for text in [
        "h100.example.org",
        "H100",
        "79.6 GiB",
        "sm_90",
        "cuda-12",
        "cuda:sm_90",
        "opencl",
    ]:
        assert text in body
    api = client.get(reverse("api:host-detail", args=["h100"])).json()
    assert api["hwspecs"] == ["cpu", "cuda", "cuda:sm_90", "opencl"]
    assert [a["index"] for a in api["accelerators"]] == [0, 1]


def test_it_says_a_retired_host_is_gone(client, fleet):
    response = client.get(reverse("inventory:host_detail", args=["old"]))
    assert response.status_code == 410
    assert "retired" in response.content.decode()


def test_it_answers_an_unknown_host_with_404_json_in_the_api(client, fleet):
    response = client.get(reverse("api:host-detail", args=["nope"]))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_it_ignores_retired_devices_when_filtering(db):
    stack = DriverStackFactory(name="cuda-12", hwspecs=["cuda"])
    host = HostFactory(name="h")
    host.stacks.add(stack)
    AcceleratorFactory(host=host, index=0, memory_mib=81559, retired=True)
    from portal.inventory.selectors import host_list

    assert list(host_list(min_memory_mib=1000)) == []
    assert Accelerator.objects.count() == 1
    assert DriverStack.objects.count() == 1
