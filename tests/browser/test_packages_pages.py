"""The package test pages as chromium draws them for a Debian member, at 1280 and 390 px: the
list with the latest result per hwspec and stack, a package with what fits and its history
(a regression flagged), a run with its summary and log; no page wider than its viewport.
Screenshots in test-output/screenshots."""

from datetime import timedelta

import pytest
from django.utils import timezone

from portal.packages import runs
from portal.packages.models import SourcePackage
from portal.packages.models import TestRun as Run  # not TestRun: pytest would collect it
from tests.browser.conftest import PHONE, login, overflow, screenshot
from tests.factories import (
    PASSWORD,
    AcceleratorFactory,
    DriverStackFactory,
    HostFactory,
    JobFactory,
    UserFactory,
)

pytestmark = pytest.mark.browser


@pytest.fixture
def history(db):
    UserFactory(username="alice", debian_member_source="salsa")
    stack = DriverStackFactory(name="cuda-12", hwspecs=["cuda"])
    for _ in range(2):
        host = HostFactory()
        host.stacks.add(stack)
        AcceleratorFactory(host=host)
    made = []
    for version, result, regression in (("1.0-1", "pass", False), ("1.1-1", "fail", True)):
        package = SourcePackage.objects.create(
            name="llama.cpp", version=version, hwspec="cuda | rocm",
            maintainer="Debian Deep Learning Team <debian-ai@lists.debian.org>",
            tests=[
                {"tests": ["cuda-smoke"], "hwspec": "cuda | rocm", "restrictions": []},
                {"tests": ["sycl-kernels"], "hwspec": "sycl", "restrictions": []},
            ],
            files=[{"name": f"llama.cpp_{version}.dsc", "size": 1, "sha256": "0" * 64}],
        )  # fmt: skip
        end = timezone.now() - timedelta(hours=3 - len(made))
        job = JobFactory(
            project=runs.tests_project(), stack=stack, hwspec="cuda", script="",
            state="succeeded" if result == "pass" else "failed",
            exit_status=0 if result == "pass" else 4, started_at=end - timedelta(minutes=4),
            ended_at=end, log="autopkgtest [09:00:01]: test cuda-smoke: [-----------------------\n"
            "ggml_cuda_init: found 1 CUDA devices\n",
        )  # fmt: skip
        made.append(
            Run.objects.create(
                package=package,
                hwspec="cuda",
                stack=stack,
                trigger="new-version",
                job=job,
                result=result,
                regression=regression,
                finished=end,
                exit_code=job.exit_status,
                summary={"cuda-smoke": "PASS" if result == "pass" else "FAIL"},
            )
        )
    return made


def test_the_package_pages_read_well_on_a_desktop_and_a_phone(page, live_server, history):
    login(page, live_server, "alice", PASSWORD)
    pages = {
        "list": "/packages/",
        "package": "/packages/llama.cpp/",
        "run": f"/packages/runs/{history[-1].pk}/",
    }
    for width, viewport in (("1280", None), ("390", PHONE)):
        if viewport:
            page.set_viewport_size(viewport)
        for name, path in pages.items():
            page.goto(f"{live_server.url}{path}")
            assert overflow(page) == 0, (path, width)
            screenshot(page, f"packages-{name}-{width}")
    page.goto(f"{live_server.url}/packages/llama.cpp/")
    text = page.locator("main").inner_text()
    assert "regression" in text.lower()
    assert "sycl: no stack serves it" in text  # no host here offers sycl
    page.goto(f"{live_server.url}/packages/runs/{history[-1].pk}/")
    assert "ggml_cuda_init: found 1 CUDA devices" in page.locator("main").inner_text()
