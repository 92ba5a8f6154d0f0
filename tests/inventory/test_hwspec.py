import pytest

from portal.inventory.hwspec import Hwspec, InvalidHwspec, parse_requirement


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cuda", Hwspec("cuda")),
        ("cuda:sm_90", Hwspec("cuda", "sm_90")),
        (" ROCm:gfx1030 ", Hwspec("rocm", "gfx1030")),
        ("cpu", Hwspec("cpu")),
        ("fpga", Hwspec("fpga")),
    ],
)
def test_it_parses_hwspecs(text, expected):
    assert Hwspec.parse(text) == expected
    assert str(expected) == text.strip().lower()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tpu", "Unknown hardware spec 'tpu'"),
        ("", "Unknown hardware spec '(empty)'"),
        ("cuda:", "Bad qualifier"),
        ("cuda:sm 90", "Bad qualifier"),
        ("cuda:$(reboot)", "Bad qualifier"),
        ("cpu:x86", "takes no qualifier"),
    ],
)
def test_it_refuses_bad_hwspecs_with_a_clear_message(text, message):
    with pytest.raises(InvalidHwspec, match=message.replace("(", r"\(").replace(")", r"\)")):
        Hwspec.parse(text)


def test_it_reads_alternatives_of_a_package_field():
    assert parse_requirement("cuda:sm_80 | rocm") == [Hwspec("cuda", "sm_80"), Hwspec("rocm")]
    assert parse_requirement("") == [Hwspec("cpu")]
