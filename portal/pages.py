"""Service refusals on pages, in one place (portal/errors.py); imports no app."""

from django.contrib import messages

from portal.errors import ServiceError
from portal.http import status_of


def refuse(request, error: ServiceError, form=None) -> int:
    """Show a service's refusal: on the form's field it names (the form's `service_fields` maps
    the service's names to its own where they differ), else above the form; with no form, as
    a message for the next page. Returns the status to answer with."""
    if form is None:
        messages.error(request, error.message)
    else:
        field = getattr(form, "service_fields", {}).get(error.field, error.field)
        form.add_error(field if field in form.fields else None, error.message)
    return status_of(error)
