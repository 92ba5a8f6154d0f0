"""The form that asks for a test run. It parses what was chosen; runs.request_runs decides."""

from django import forms

from portal.inventory.forms import StackChoiceField
from portal.inventory.models import DriverStack
from portal.packages.models import SourcePackage


class RunRequestForm(forms.Form):
    # The service's field names -> the form's (portal/pages.py refuse).
    service_fields = {"package": "version"}

    version = forms.ChoiceField(label="Version", required=False)
    dsc_url = forms.URLField(
        label="or a .dsc URL",
        required=False,
        max_length=500,
        assume_scheme="https",
        help_text="An http(s) URL of a .dsc; its files are fetched from beside it and checked "
        "against its SHA256s.",
    )
    hwspec = forms.ChoiceField(label="Hardware spec", required=False)
    stack = StackChoiceField(
        label="Driver stack",
        queryset=DriverStack.objects.all(),
        to_field_name="name",
        required=False,
        empty_label="every stack that serves it",
    )

    def __init__(self, package_name: str, hwspecs: list[str], *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.package_name = package_name
        if not package_name:
            self.fields["dsc_url"].label = ".dsc URL"
            self.fields["dsc_url"].required = True
        versions = (
            SourcePackage.objects.filter(name=package_name, archive__isnull=False)
            .values_list("version", flat=True)
            .distinct()
        )
        version_field = self.fields["version"]
        assert isinstance(version_field, forms.ChoiceField)  # noqa: S101 (for mypy)
        # The newest version first, the default; a .dsc URL last.
        version_field.choices = [(v, v) for v in versions] + [("", "a .dsc URL instead")]
        hwspec_field = self.fields["hwspec"]
        assert isinstance(hwspec_field, forms.ChoiceField)  # noqa: S101
        hwspec_field.choices = [("", "every one that fits")] + [(h, h) for h in hwspecs]

    def clean(self):
        data = super().clean() or {}
        if not data.get("version") and not data.get("dsc_url"):
            raise forms.ValidationError("Choose a version from the archive, or give a .dsc URL.")
        if data.get("version") and data.get("dsc_url"):
            raise forms.ValidationError("Choose a version or give a .dsc URL, not both.")
        return data

    def request_kwargs(self) -> dict:
        data = self.cleaned_data
        if data["dsc_url"]:
            return {"dsc_url": data["dsc_url"], "hwspec": data["hwspec"], "stack": data["stack"]}
        return {
            "package": self.package_name,
            "version": data["version"],
            "hwspec": data["hwspec"],
            "stack": data["stack"],
        }
