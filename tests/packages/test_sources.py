"""Reading source packages: what dpkg really writes, and portal.packages.sources on it."""

import pytest
from debian import deb822

from tests.packages.builder import build_source


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("sources")
    return {
        "xs": build_source(work, "xs-cuda", "1.0", control_field=("XS-Requires-Hwspec", "cuda")),
        "x": build_source(work, "x-rocm", "1.0", control_field=("X-Requires-Hwspec", "rocm")),
    }


def test_it_finds_dpkg_copying_xs_into_the_dsc_as_requires_hwspec(built):
    with open(built["xs"]) as f:
        dsc = deb822.Dsc(f)
    assert dsc["Requires-Hwspec"] == "cuda"
    assert dsc["Testsuite"] == "autopkgtest"
    assert "XS-Requires-Hwspec" not in dsc


def test_it_finds_dpkg_leaving_a_plain_x_field_out_of_the_dsc(built):
    with open(built["x"]) as f:
        dsc = deb822.Dsc(f)
    assert "Requires-Hwspec" not in dsc
    assert "X-Requires-Hwspec" not in dsc
