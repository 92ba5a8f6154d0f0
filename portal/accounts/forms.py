from django import forms

from portal.accounts.models import PartnerMembership, PartnerProject, User, time_zone_names
from portal.accounts.sshkeys import MAX_INPUT_CHARS

# The regions of the tz database's canonical "Region/City" names: the menu leaves out its
# legacy aliases ("US/Eastern"), fixed offsets ("Etc/GMT+5") and oddities ("Factory").
REGIONS = (
    "Africa", "America", "Antarctica", "Arctic", "Asia", "Atlantic", "Australia", "Europe",
    "Indian", "Pacific",
)  # fmt: skip


# Where most of Debian's contributors and partners live, first in the menu.
COMMON_ZONES = (
    "Europe/Berlin", "Europe/London", "Europe/Paris", "America/New_York", "America/Chicago",
    "America/Los_Angeles", "America/Sao_Paulo", "Asia/Kolkata", "Asia/Shanghai", "Asia/Tokyo",
    "Australia/Sydney",
)  # fmt: skip


def time_zone_choices(current: str = "") -> list:
    """UTC and the common zones first, then the other canonical zones grouped by region; each
    zone once, shown by its city ("New York", "Berlin (Europe)" among the common ones), so
    typing a city's first letters finds it; the person's current zone stays in the menu even
    if it is a legacy name."""
    names = time_zone_names()
    groups: dict[str, list[tuple[str, str]]] = {region: [] for region in REGIONS}
    for name in names:
        region, _, city = name.partition("/")
        if region in groups and city and name not in COMMON_ZONES:
            groups[region].append((name, _city(city)))
    common = [
        (z, f"{_city(z.partition('/')[2])} ({z.partition('/')[0]})")
        for z in COMMON_ZONES
        if z in names
    ]
    choices: list = [("Common", [("UTC", "UTC"), *common])]
    known = {name for zones in groups.values() for name, _ in zones} | {"UTC"}
    if current and current not in known:
        choices.insert(0, (current, current))
    return choices + list(groups.items())


def _city(name: str) -> str:
    return name.replace("_", " ").replace("/", ": ")


class ProfileForm(forms.ModelForm):
    time_zone = forms.ChoiceField(help_text="Every time on the portal is shown in this zone.")

    class Meta:
        model = User
        fields = ["first_name", "last_name", "time_zone"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        current = self.instance.time_zone if self.instance else ""
        self.fields["time_zone"].choices = time_zone_choices(current)  # type: ignore[attr-defined]


class SSHKeyAddForm(forms.Form):
    keys = forms.CharField(
        label="Public keys",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off"}),
        # Checked again by the parser; this bound stops huge bodies before parsing.
        max_length=MAX_INPUT_CHARS,
        help_text="Paste one or more lines of ~/.ssh/id_ed25519.pub (or another .pub file).",
    )


class ProjectApplicationForm(forms.ModelForm):
    """What staff need to judge a partner project: who, what, and under which licences."""

    url = forms.URLField(label="Web site", max_length=200, assume_scheme="https")
    description = forms.CharField(
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 6}),
        help_text="What you would train, on which data, and why on Debian's hardware.",
    )

    class Meta:
        model = PartnerProject
        fields = ["name", "url", "description", "code_licence", "data_licence", "contact_email"]
        labels = {"contact_email": "Contact e-mail"}
        help_texts = {
            "code_licence": "An SPDX identifier, such as Apache-2.0 or GPL-3.0-or-later.",
            "data_licence": "An SPDX identifier, such as CC-BY-4.0, or say the data is not free.",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("code_licence", "data_licence", "contact_email"):
            self.fields[name].required = True


class MemberAddForm(forms.Form):
    username = forms.CharField(label="Username", max_length=150)
    role = forms.ChoiceField(label="Role", choices=PartnerMembership.Role.choices, initial="member")
