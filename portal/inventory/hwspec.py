"""Hardware specs: what a package needs (``X-Requires-Hwspec``) and what a host offers.

A hwspec is a kind with an optional qualifier: ``cuda``, ``cuda:sm_90``, ``rocm:gfx1030``,
``sycl``, ``opencl``, ``fpga``, ``cpu`` (the default). A package field lists alternatives
separated by ``|``: ``X-Requires-Hwspec: cuda:sm_80 | rocm``.
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


class InvalidHwspec(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Hwspec:
    kind: str
    qualifier: str = ""

    def __str__(self):
        return f"{self.kind}:{self.qualifier}" if self.qualifier else self.kind

    @classmethod
    def parse(cls, text: str) -> "Hwspec":
        text = text.strip().lower()
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
    """Parse an ``X-Requires-Hwspec`` value into its alternatives (empty means cpu)."""
    parts = [p for p in field.split("|") if p.strip()]
    return [Hwspec.parse(p) for p in parts] or [Hwspec("cpu")]
