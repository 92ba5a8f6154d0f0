"""Every API error is JSON with a machine-readable code and a human message.

A service's refusal (portal/errors.py) is mapped here and nowhere else: the status from its
kind (portal.http.status_of), the body `{code, message}`, with `errors` naming the field where
it names one (in the API's name: the view's `service_fields`), and a booking conflict's
`blockers`.
"""

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from portal.errors import ServiceError
from portal.http import status_of


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


def _first(detail, *, name_field: bool) -> str:
    """The first leaf of a DRF error structure (of messages or of codes)."""
    if isinstance(detail, dict):
        field, value = next(iter(detail.items()))
        leaf = _first(value, name_field=name_field)
        if not name_field or field in ("non_field_errors", "detail"):
            return leaf
        return f"{field}: {leaf}"
    if isinstance(detail, list):
        return _first(detail[0], name_field=name_field) if detail else ""
    return str(detail)


def _blocker(allocation, user) -> dict:
    reservation = allocation.reservation
    return {
        "host": allocation.accelerator.host.name,
        "index": allocation.accelerator.index,
        "start": allocation.start,
        "end": allocation.end,
        "yours": bool(reservation and reservation.user_id == user.pk),
    }


def refusal(error: ServiceError, context) -> Response:
    """The answer to a service's refusal."""
    body: dict[str, object] = {"code": error.code, "message": error.message}
    if error.field:
        fields = getattr(context.get("view"), "service_fields", {})
        body["errors"] = {fields.get(error.field, error.field): [error.message]}
    blockers = getattr(error, "blockers", [])
    if blockers:
        user = context["request"].user
        body["blockers"] = [_blocker(b, user) for b in blockers]
    return Response(body, status=status_of(error))


def exception_handler(exc, context):
    if isinstance(exc, ServiceError):
        return refusal(exc, context)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: Django's handler answers (and logs) it
    if isinstance(exc, exceptions.APIException):
        detail, code = exc.detail, _first(exc.get_codes(), name_field=False)
    else:  # Django's Http404 and PermissionDenied, translated by DRF
        detail, code = response.data, "not_found" if response.status_code == 404 else "error"
    body: dict[str, object] = {"code": code, "message": _first(detail, name_field=True)}
    if isinstance(detail, dict):
        body["errors"] = response.data
    elif isinstance(detail, list):  # errors is an object, as the schema says (ErrorSerializer)
        body["errors"] = {"non_field_errors": response.data}
    return Response(body, status=response.status_code, headers=response.headers)
