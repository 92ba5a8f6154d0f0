"""Forms of the booking pages; the API validates query strings with the same forms.

Times typed in a form are read in the user's time zone (UserTimezoneMiddleware activates it);
a time that does not exist or is ambiguous there (a daylight-saving change) is refused.
"""

from dataclasses import replace
from datetime import timedelta
from typing import cast

from django import forms
from django.utils import timezone

from portal.booking.availability import Need, Slot, availability, ceil_to, free_accelerators
from portal.booking.bounds import validate_moment
from portal.booking.models import BookingPolicy
from portal.inventory.forms import StackChoiceField, clean_hwspec_alternatives
from portal.inventory.models import DriverStack, Host

GB = 1000**3 // 1024**2  # vendors quote memory in decimal GB; devices report MiB


class DateTimeInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, **kwargs):
        super().__init__(format="%Y-%m-%dT%H:%M", **kwargs)


class NeedForm(forms.Form):
    """A need and when: "N devices of hwspec X, M GB each, stack S, for H hours, from T on"."""

    count = forms.IntegerField(
        label="Devices", min_value=1, max_value=64, initial=1, required=False
    )
    hwspec = forms.CharField(
        label="Hardware spec",
        required=False,
        max_length=64,
        help_text="cuda, cuda:sm_90, rocm:gfx1030, sycl, opencl, fpga; alternatives: cuda | rocm",
    )
    min_memory_gb = forms.IntegerField(
        label="Minimum memory per device (GB)", required=False, min_value=0, max_value=4096
    )
    stack = StackChoiceField(
        label="Driver stack",
        queryset=DriverStack.objects.all(),
        to_field_name="name",
        required=False,
        empty_label="any stack",
    )
    free_only = forms.BooleanField(label="Free stacks only (main)", required=False)
    hours = forms.DecimalField(
        label="Hours", min_value=0, max_digits=5, decimal_places=2, initial=2
    )
    start = forms.DateTimeField(
        label="From",
        required=False,
        widget=DateTimeInput(),
        help_text="In your time zone.",
        validators=[validate_moment],
    )
    days = forms.IntegerField(label="Search days ahead", min_value=1, initial=7, required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy = BookingPolicy.current()

    def clean_count(self):
        return self.cleaned_data["count"] or 1

    def clean_hwspec(self) -> tuple:
        return clean_hwspec_alternatives(self.cleaned_data["hwspec"])

    def clean_days(self):
        days = self.cleaned_data["days"]
        if days and days > self.policy.max_days_ahead:
            raise forms.ValidationError(f"Search at most {self.policy.max_days_ahead} days ahead.")
        return days or 7

    def clean_hours(self):
        hours = self.cleaned_data["hours"]
        duration = timedelta(hours=float(hours))
        policy = self.policy
        if duration <= timedelta(0):
            raise forms.ValidationError("A booking lasts longer than zero.")
        if duration % policy.granularity:
            raise forms.ValidationError(f"Use a multiple of {policy.granularity_minutes} minutes.")
        if duration > timedelta(hours=policy.max_hours):
            raise forms.ValidationError(f"A booking lasts at most {policy.max_hours} hours.")
        return duration

    def clean(self):
        super().clean()
        data = self.cleaned_data
        specs, stack = data.get("hwspec"), data.get("stack")
        if specs and stack and not any(stack.serves(spec) for spec in specs):
            kinds = " or ".join(dict.fromkeys(spec.kind for spec in specs))
            self.add_error("stack", f"The stack {stack.name} does not serve {kinds}.")
        if stack and data.get("free_only") and not stack.is_free:
            self.add_error(
                "stack", f"The stack {stack.name} is {stack.get_area_display()}, not free."
            )
        elif specs and not stack and data.get("free_only"):
            free = DriverStack.objects.filter(area=DriverStack.Area.MAIN)
            if not any(each.serves(spec) for each in free for spec in specs):
                kinds = " or ".join(dict.fromkeys(spec.kind for spec in specs))
                self.add_error("free_only", f"No free stack serves {kinds}.")
        return data

    def needs(self) -> list[Need]:
        """The need of each alternative ("cuda | rocm": N cuda devices, or N rocm devices;
        never a mix), in the order written, without those the chosen stack does not serve.
        "Free stacks only" with any stack: a need per free stack that serves the alternative."""
        data = self.cleaned_data
        gb = data.get("min_memory_gb")
        stack = data.get("stack")
        stacks: list[DriverStack | None] = [stack]
        if stack is None and data.get("free_only"):
            stacks = list(DriverStack.objects.filter(area=DriverStack.Area.MAIN))
        asked = data.get("hwspec") or (None,)
        return [
            Need(
                count=data["count"],
                hwspec=spec,
                min_memory_mib=gb * GB if gb else 0,
                stack=each,
            )
            for spec in asked
            for each in stacks
            if spec is None or each is None or each.serves(spec)
        ]

    def slots(self) -> list[Slot]:
        """The availability search for this (valid) form: per alternative, merged; a host's
        earliest slot of any alternative (the first written wins a tie), soonest first."""
        found: dict[int, tuple[Slot, Need]] = {}
        for need in self.needs():
            for slot in availability(
                need,
                duration=self.cleaned_data["hours"],
                earliest=self.earliest(),
                days=self.cleaned_data["days"],
                step=self.policy.granularity,
            ):
                if slot.host.pk not in found or slot.start < found[slot.host.pk][0].start:
                    found[slot.host.pk] = (slot, need)
        ordered = sorted(found.values(), key=lambda item: (item[0].start, item[0].host.name))[:10]
        self._slot_needs = {(slot.host.pk, slot.start): need for slot, need in ordered}
        return [slot for slot, _ in ordered]

    def stacks_for(self, slot: Slot) -> list[DriverStack]:
        """The stacks a booking of `slot` may use: the one asked for, or, for "any stack", each
        of the host's stacks that serves the slot's need on devices free for it (free ones
        first)."""
        need = self._slot_needs[(slot.host.pk, slot.start)]
        if need.stack is not None:
            return [need.stack]
        return sorted(
            (
                stack
                for stack in slot.host.stacks.all()
                if (need.hwspec is None or stack.serves(need.hwspec))
                and free_accelerators(
                    replace(need, stack=stack), slot.start, slot.end, host=slot.host
                )
            ),
            key=lambda stack: (not stack.is_free, stack.name),
        )

    def earliest(self, now=None):
        """The search's start: the time asked for, but never before the current grid step."""
        now = ceil_to(now or timezone.now(), self.policy.granularity)
        start = self.cleaned_data.get("start")
        return max(ceil_to(start, self.policy.granularity), now) if start else now


class ReservationForm(forms.Form):
    """Book chosen accelerators of one host, or the whole host."""

    accelerators = forms.MultipleChoiceField(
        label="Accelerators", required=False, widget=forms.CheckboxSelectMultiple
    )
    whole_host = forms.BooleanField(label="The whole host", required=False)
    stack = StackChoiceField(
        label="Driver stack", queryset=DriverStack.objects.none(), to_field_name="name"
    )
    start = forms.DateTimeField(label="Start", widget=DateTimeInput(), validators=[validate_moment])
    end = forms.DateTimeField(label="End", widget=DateTimeInput(), validators=[validate_moment])
    purpose = forms.CharField(label="Purpose", max_length=200, required=False)

    def __init__(self, host: Host, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host
        usable = list(host.accelerators.filter(retired=False).order_by("index", "vendor"))
        # A device is its index, or vendor:index where two vendors number one so (NVIDIA #0
        # and AMD #0 of one host).
        indexes = [a.index for a in usable]
        self.usable = {
            f"{a.vendor}:{a.index}" if indexes.count(a.index) > 1 else str(a.index): a
            for a in usable
        }
        cast(forms.MultipleChoiceField, self.fields["accelerators"]).choices = [
            (key, f"#{a.index} {a.model}, {a.memory_gib} GiB") for key, a in self.usable.items()
        ]
        cast(forms.ModelChoiceField, self.fields["stack"]).queryset = host.stacks.all()

    def clean(self):
        super().clean()
        data = self.cleaned_data
        if not data.get("whole_host") and not data.get("accelerators"):
            raise forms.ValidationError("Choose at least one accelerator, or the whole host.")
        return data

    def chosen(self):
        return [self.usable[i] for i in self.cleaned_data.get("accelerators", [])]


class EndForm(forms.Form):
    end = forms.DateTimeField(label="New end", widget=DateTimeInput(), validators=[validate_moment])
