from django import forms

from portal.accounts.models import PartnerMembership, PartnerProject, User, time_zone_names
from portal.accounts.sshkeys import MAX_INPUT_CHARS


class ProfileForm(forms.ModelForm):
    time_zone = forms.ChoiceField(
        choices=lambda: [(z, z) for z in time_zone_names()],
        help_text="Every time on the portal is shown in this zone.",
    )

    class Meta:
        model = User
        fields = ["first_name", "last_name", "time_zone"]


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
