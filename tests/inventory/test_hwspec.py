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


def test_the_rocm_teams_architecture_with_a_gpu_modifier():
    spec = Hwspec.parse("amd64+gfx1030")
    assert (spec.kind, spec.qualifier, spec.arch) == ("rocm", "gfx1030", "amd64")
    assert str(spec) == "amd64+gfx1030" and Hwspec.parse(str(spec)) == spec
    assert Hwspec.parse("arm64+sm_90") == Hwspec("cuda", "sm_90", "arm64")
    with pytest.raises(InvalidHwspec, match="after amd64\\+ name an AMD gfx"):
        Hwspec.parse("amd64+pvc")


def test_alternatives_are_read_once_each_and_an_empty_one_is_an_error():
    assert parse_requirement("cuda |  rocm:gfx1030 | cuda") == [
        Hwspec("cuda"),
        Hwspec("rocm", "gfx1030"),
    ]
    assert parse_requirement("  \n ") == [Hwspec("cpu")]
    with pytest.raises(InvalidHwspec, match="Empty alternative"):
        parse_requirement("cuda |")
    with pytest.raises(InvalidHwspec, match="Unknown hardware spec 'metal'"):
        parse_requirement("cuda | metal")
