"""Free stacks are a choice users can make at a glance: menus say which stacks are not free, and
the finder can keep to free (main) stacks, as the architecture promises."""

import pytest
from django.urls import reverse

from tests.factories import DriverStackFactory, UserFactory

pytestmark = pytest.mark.usefixtures("frozen")


@pytest.fixture
def opencl(host):
    """gpu1 offers a free stack for its NVIDIA devices too (Mesa's rusticl, say)."""
    stack = DriverStackFactory(name="opencl", hwspecs=["opencl"], area="main")
    host.stacks.add(stack)
    host.stacks.filter(name="cuda-12").update(hwspecs=["cuda", "opencl"])  # as NVIDIA's does
    return stack


def test_menus_mark_stacks_that_are_not_free(client, host, opencl):
    client.force_login(UserFactory(debian_member_source="salsa"))
    for url in (reverse("booking:finder"), reverse("booking:book", args=["gpu1"])):
        body = client.get(url).content.decode()
        assert ">cuda-12 (non-free)</option>" in body, url
        assert ">opencl</option>" in body, url


def test_the_finder_keeps_to_free_stacks_when_asked(client, host, opencl):
    client.force_login(UserFactory(debian_member_source="salsa"))
    query = {"hwspec": "opencl", "hours": "2", "days": 1, "free_only": "on"}
    slots = client.get(reverse("api:availability"), query).json()
    assert [s["host"] for s in slots] == ["gpu1"]
    results = client.get(reverse("booking:finder"), query).content.decode().split("<table")[-1]
    assert 'value="opencl"' in results and 'value="cuda-12"' not in results
    anything = {k: v for k, v in query.items() if k != "free_only"}
    results = client.get(reverse("booking:finder"), anything).content.decode().split("<table")[-1]
    assert 'value="opencl"' in results and 'value="cuda-12"' in results

    refused = client.get(reverse("booking:finder"), {**query, "hwspec": "cuda"})
    assert refused.status_code == 400
    assert "No free stack serves cuda." in refused.content.decode()
    refused = client.get(reverse("booking:finder"), {**query, "stack": "cuda-12"})
    assert "The stack cuda-12 is non-free, not free." in refused.content.decode()
