from django import forms

from portal.notifications.outbox import Undeliverable, check_url


class WebhookForm(forms.Form):
    url = forms.URLField(
        label="Webhook URL",
        required=True,
        max_length=500,
        assume_scheme="https",
        widget=forms.URLInput(attrs={"size": 40}),
        help_text="An https address that takes a signed JSON POST (a Matrix or IRC bridge, say).",
    )

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            check_url(url)
        except Undeliverable as exc:
            said = str(exc)
            raise forms.ValidationError(said[:1].upper() + said[1:] + ".") from None
        return url
