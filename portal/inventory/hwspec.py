"""Hardware specs: what a package needs (``X-Requires-Hwspec``) and what a host offers.

A hwspec is a kind with an optional qualifier: ``cuda``, ``cuda:sm_90``, ``rocm:gfx1030``,
``sycl``, ``opencl``, ``fpga``, ``cpu`` (the default). A package field lists alternatives
separated by ``|``: ``X-Requires-Hwspec: cuda:sm_80 | rocm``.

Debian's ROCm team names a GPU as an architecture with a modifier, ``amd64+gfx1030`` (their
debci fork's queues): read as ``rocm:gfx1030`` on an amd64 host, and written back the same way.
"""

import re
from dataclasses import dataclass

KINDS = ("cpu", "cuda", "rocm", "sycl", "opencl", "fpga")

# Which accelerator vendors can serve each kind. "cpu" needs no accelerator.
VENDORS_FOR_KIND = {
    "cuda": ("nvidia",),
    "rocm": ("amd",),
    "sycl": ("intel",),
    "opencl": ("nvidia", "amd", "intel", "fpga"),
    "fpga": ("fpga",),
}

# The kind whose qualifier names a device's architecture (cuda:sm_90, rocm:gfx90a, ...).
NATIVE_KIND = {"nvidia": "cuda", "amd": "rocm", "intel": "sycl", "fpga": "fpga"}

_QUALIFIER = re.compile(r"[a-z0-9][a-z0-9_.+-]{0,31}")
# Debian architectures a host can have (inventory.Host.Architecture) and the kind a modifier's
# device architecture belongs to, in the ``amd64+gfx1030`` form.
ARCHITECTURES = ("amd64", "arm64", "ppc64el", "riscv64")
_MODIFIER_KIND = (("gfx", "rocm"), ("sm_", "cuda"))


class InvalidHwspec(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Hwspec:
    kind: str
    qualifier: str = ""
    arch: str = ""  # the host's Debian architecture, from the amd64+gfx1030 form only

    def __str__(self):
        if self.arch:
            return f"{self.arch}+{self.qualifier}"
        return f"{self.kind}:{self.qualifier}" if self.qualifier else self.kind

    @classmethod
    def parse(cls, text: str) -> "Hwspec":
        text = text.strip().lower()
        arch, plus, modifier = text.partition("+")
        if plus and ":" not in arch and arch in ARCHITECTURES:
            for prefix, kind in _MODIFIER_KIND:
                if modifier.startswith(prefix) and _QUALIFIER.fullmatch(modifier):
                    return cls(kind, modifier, arch)
            raise InvalidHwspec(
                f"Bad device in {text[:40]!r}: after {arch}+ name an AMD gfx or an NVIDIA sm_ "
                "architecture, as in amd64+gfx1030."
            )
        kind, _, qualifier = text.partition(":")
        if kind not in KINDS:
            shown = text[:40] or "(empty)"
            raise InvalidHwspec(
                f"Unknown hardware spec {shown!r}: use one of {', '.join(KINDS)}, "
                "optionally with a qualifier such as cuda:sm_90 or rocm:gfx1030."
            )
        if ":" in text and not _QUALIFIER.fullmatch(qualifier):
            raise InvalidHwspec(
                f"Bad qualifier in {text[:40]!r}: use lower-case letters, digits, '_', '.', "
                "'+' or '-' (at most 32), as in sm_90 or gfx1030."
            )
        if kind == "cpu" and qualifier:
            raise InvalidHwspec("The cpu hardware spec takes no qualifier.")
        return cls(kind, qualifier)


def parse_requirement(field: str) -> list[Hwspec]:
    """Parse an ``X-Requires-Hwspec`` value into its alternatives (empty means cpu).

    A value is one line of alternatives; an empty alternative (``cuda |``, ``| rocm``) is an
    error, not a silent cpu."""
    text = " ".join(field.split())
    if not text:
        return [Hwspec("cpu")]
    parts = text.split("|")
    if any(not p.strip() for p in parts):
        raise InvalidHwspec(
            f"Empty alternative in {text[:60]!r}: write alternatives as 'cuda | rocm'."
        )
    specs = [Hwspec.parse(p) for p in parts]
    return list(dict.fromkeys(specs))  # in the order written, each once
