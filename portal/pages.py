"""Service refusals on pages, in one place (portal/errors.py); imports no app."""

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import render

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


def confirm_first(
    request, *, question: str, consequence: str, button: str, back: str
) -> HttpResponse | None:
    """A destructive POST not yet confirmed gets a confirmation page instead (answer 200,
    nothing changed): the same form again with ``confirmed=1``, and a way back. With
    JavaScript, static/portal/confirm.js asks in a dialog and sends ``confirmed=1`` itself, so
    this page is what people without it see. None when confirmed: go on."""
    if request.POST.get("confirmed") == "1":
        return None
    context = {
        "question": question,
        "consequence": consequence,
        "button": button,
        "action": request.path,
        "back": back,
        # Whatever else the form sent (a reason, say) goes along, except the CSRF token.
        "fields": [(k, v) for k, v in request.POST.items() if k != "csrfmiddlewaretoken"],
    }
    return render(request, "confirm.html", context)
