from typing import cast

from django import forms

from portal.inventory.hwspec import Hwspec, InvalidHwspec, parse_requirement
from portal.inventory.models import Accelerator, DriverStack


def clean_hwspec_text(value: str) -> Hwspec | None:
    """A hwspec typed into a form field: None when blank, a field error when malformed."""
    if not value.strip():
        return None
    try:
        return Hwspec.parse(value)
    except InvalidHwspec as exc:
        raise forms.ValidationError(str(exc)) from None


class StackChoiceField(forms.ModelChoiceField):
    """A driver stack by name, its archive area said when it is not free ("cuda-12
    (non-free)"), so that choosing a free stack never takes reading its description."""

    def label_from_instance(self, obj) -> str:
        stack = cast(DriverStack, obj)
        return stack.name if stack.is_free else f"{stack.name} ({stack.get_area_display()})"


def clean_hwspec_alternatives(value: str) -> tuple[Hwspec, ...]:
    """Alternatives typed into a form field ("cuda | rocm"): () when blank, a field error when
    one is malformed."""
    if not value.strip():
        return ()
    try:
        return tuple(parse_requirement(value))
    except InvalidHwspec as exc:
        raise forms.ValidationError(str(exc)) from None


class HostFilterForm(forms.Form):
    vendor = forms.ChoiceField(
        choices=[("", "any vendor"), *Accelerator.Vendor.choices], required=False
    )
    hwspec = forms.CharField(
        label="Hardware spec",
        required=False,
        max_length=64,
        help_text="cuda, cuda:sm_90, rocm:gfx1030, sycl, opencl, fpga or cpu",
    )
    min_memory_gb = forms.IntegerField(
        label="Minimum device memory (GB)", required=False, min_value=0, max_value=4096
    )
    stack = forms.ChoiceField(label="Driver stack", required=False)
    free_only = forms.BooleanField(label="Free stacks only (main)", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        names = DriverStack.objects.values_list("name", flat=True)
        stack = cast(forms.ChoiceField, self.fields["stack"])
        stack.choices = [("", "any stack"), *((n, n) for n in names)]

    def clean_hwspec(self):
        return clean_hwspec_text(self.cleaned_data["hwspec"])

    def selector_kwargs(self) -> dict:
        data = self.cleaned_data
        gb = data.get("min_memory_gb")
        return {
            "vendor": data.get("vendor") or "",
            "hwspec": data.get("hwspec"),
            # Vendors quote memory in decimal GB; devices report MiB.
            "min_memory_mib": gb * 1000**3 // 1024**2 if gb else None,
            "stack": data.get("stack") or "",
            "free_only": data.get("free_only") or False,
        }
