from django import forms

from portal.accounts.models import User, time_zone_names
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
