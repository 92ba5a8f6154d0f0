"""The job submission form. It parses what was typed; the service (job_submit) decides."""

from datetime import timedelta
from typing import cast

from django import forms

from portal.accounts.models import PartnerProject, User
from portal.booking.forms import GB
from portal.inventory.forms import StackChoiceField, clean_hwspec_text
from portal.inventory.models import DriverStack
from portal.jobs import services
from portal.jobs.models import Job
from portal.jobs.services import MAX_ARRAY
from provisioning.agent.rules import MAX_ENV


def submittable_projects(user: User):
    """The approved partner projects the user belongs to."""
    return PartnerProject.objects.filter(
        state=PartnerProject.State.APPROVED, partnermembership__user=user
    ).order_by("name")


def parse_env_lines(text: str) -> dict[str, str]:
    """NAME=value lines (blank lines and # comments skipped) -> a dict; names checked later."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name:
            raise forms.ValidationError(f"Line {number}: write NAME=value.")
        if name in env:
            raise forms.ValidationError(f"Line {number}: {name[:70]} is set twice.")
        env[name] = value
        if len(env) > MAX_ENV:
            raise forms.ValidationError(f"At most {MAX_ENV} variables.")
    return env


class JobForm(forms.Form):
    # The service's field names -> the form's, where they differ (portal/pages.py refuse).
    service_fields = {"walltime": "walltime_hours", "min_memory_mib": "min_memory_gb"}

    project = forms.ModelChoiceField(
        label="Partner project", queryset=PartnerProject.objects.none(), to_field_name="slug"
    )
    name = forms.CharField(label="Name", max_length=100)
    script = forms.CharField(
        label="Script",
        strip=False,
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false"}),
        help_text="Run with /bin/sh inside the stack's session, in the input's directory.",
    )
    stack = StackChoiceField(
        label="Driver stack", queryset=DriverStack.objects.all(), to_field_name="name"
    )
    free_only = forms.BooleanField(
        label="Free stacks only (main)",
        required=False,
        help_text="Refuse a stack of contrib or non-free.",
    )
    count = forms.IntegerField(label="Devices", min_value=1, max_value=64, initial=1)
    hwspec = forms.CharField(
        label="Hardware spec",
        required=False,
        max_length=40,
        help_text="cuda, cuda:sm_90, rocm:gfx1030, sycl, opencl, fpga; empty: any device.",
    )
    min_memory_gb = forms.IntegerField(
        label="Minimum memory per device (GB)", required=False, min_value=0, max_value=4096
    )
    walltime_hours = forms.DecimalField(
        label="Walltime (hours)",
        max_digits=7,
        decimal_places=2,
        initial=4,
        help_text="The job is stopped when it runs this long; shorter jobs fit more gaps.",
    )
    env = forms.CharField(
        label="Environment variables",
        required=False,
        strip=False,
        max_length=MAX_ENV * 4200,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text="One NAME=value a line.",
    )
    array = forms.IntegerField(
        label="Array of tasks",
        required=False,
        min_value=1,
        max_value=MAX_ARRAY,
        help_text=f"Optional: run the job this many times (1 to {MAX_ARRAY}), like sbatch "
        "--array; each task is a job of its own with its index, 0 to N-1.",
    )
    input_git_url = forms.URLField(
        label="Input: git URL",
        required=False,
        max_length=200,
        assume_scheme="https",
        help_text="An https:// repository, cloned before the script runs.",
    )
    input_git_ref = forms.CharField(
        label="Input: git ref",
        required=False,
        max_length=100,
        help_text="A branch or a tag; left empty, the repository's default branch.",
    )
    input_archive = forms.FileField(
        label="Input: archive",
        required=False,
        help_text="Or a .tar.gz, unpacked before the script runs.",
    )
    partition = forms.ChoiceField(
        label="Run on",
        required=False,
        choices=[("", "the portal's fleet")],
        help_text="The fleet, or a partition of a Slurm cluster your project has an account on.",
    )
    code_licence = forms.CharField(
        label="Licence of the code", max_length=100, help_text="An SPDX identifier."
    )
    data_licence = forms.CharField(
        label="Licence of the training data",
        max_length=100,
        help_text="An SPDX identifier, or say the data is not free.",
    )
    model_freedom = forms.ChoiceField(
        label="The trained model is",
        choices=Job.ModelFreedom.choices,
        widget=forms.RadioSelect,
        help_text="In the spirit of Debian's machine-learning policy: a model is free when its "
        "code and its training data are free.",
    )

    def __init__(self, user: User, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cast(forms.ModelChoiceField, self.fields["project"]).queryset = submittable_projects(user)
        field = cast(forms.ChoiceField, self.fields["partition"])
        clusters = services.cluster_route.choices(user) if services.cluster_route else []
        if clusters:  # Slurm partitions (portal/clusters) the user's projects may use
            field.choices = [("", "the portal's fleet"), *clusters]
        else:
            field.widget = forms.HiddenInput()

    def clean_hwspec(self) -> str:
        spec = clean_hwspec_text(self.cleaned_data["hwspec"])
        return str(spec) if spec else ""

    def clean(self):
        super().clean()
        data = self.cleaned_data
        stack = data.get("stack")
        if stack is not None and data.get("free_only") and not stack.is_free:
            self.add_error(
                "stack", f"The stack {stack.name} is {stack.get_area_display()}, not free."
            )
        return data

    def clean_env(self) -> dict[str, str]:
        return parse_env_lines(self.cleaned_data["env"])

    def submit_kwargs(self) -> dict:
        """The valid form as job_submit's arguments."""
        data = self.cleaned_data
        return {
            "project": data["project"],
            "name": data["name"],
            "script": data["script"],
            "stack": data["stack"],
            "count": data["count"],
            "hwspec": data["hwspec"],
            "min_memory_mib": (data.get("min_memory_gb") or 0) * GB,
            "walltime": timedelta(hours=float(data["walltime_hours"])),
            "env": data["env"],
            "input_git_url": data.get("input_git_url") or "",
            "input_git_ref": data.get("input_git_ref") or "",
            "input_archive": data.get("input_archive"),
            "code_licence": data["code_licence"],
            "data_licence": data["data_licence"],
            "model_freedom": data["model_freedom"],
            "array": data.get("array"),
            "partition": data.get("partition") or "",
        }
