"""The OpenAPI schema tells every answer an operation can give, errors included.

Errors are the body of portal/api/errors.py: `{"code", "message", "errors"?}`; a booking
conflict adds `blockers`. The answers every operation shares are added here, once; the ones
particular to an operation (409, 503) are declared on it with `extend_schema`.
"""

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import permissions, serializers


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable, as `not_found` or `conflict`.")
    message = serializers.CharField(help_text="For people: what is wrong, and what to do.")
    # The metaclass moves declared fields out of the class, so .errors stays the property.
    errors = serializers.DictField(  # type: ignore[assignment]
        required=False,
        help_text="The details: per field, its messages (`non_field_errors`: the whole body).",
    )

    class Meta:
        ref_name = "Error"


class BlockerSerializer(serializers.Serializer):
    host = serializers.CharField()
    index = serializers.IntegerField(help_text="The device's index on its host.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    yours = serializers.BooleanField(help_text="The booking in the way is the caller's own.")


class ConflictSerializer(ErrorSerializer):
    blockers = BlockerSerializer(
        many=True, required=False, help_text="The bookings in the way, where there are some."
    )

    class Meta:
        ref_name = "Conflict"


def error(description: str, serializer=ErrorSerializer) -> OpenApiResponse:
    return OpenApiResponse(serializer, description=description)


CONFLICT = error("The request conflicts with the current state.", ConflictSerializer)
BUSY = error("The booking system is busy: try again in a moment.")


class PortalAutoSchema(AutoSchema):
    """Adds the error answers that any operation can give, where it does not declare its own."""

    def get_override_parameters(self):
        retry_after = OpenApiParameter(
            "Retry-After", OpenApiTypes.INT, location=OpenApiParameter.HEADER, response=[429],
            description="Seconds to wait before the next request.",
        )  # fmt: skip
        return [*super().get_override_parameters(), retry_after]

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for code, answer in self._errors().items():
            responses.setdefault(code, self._get_response_for_code(answer, code))
        return dict(sorted(responses.items()))

    def _errors(self) -> dict[str, OpenApiResponse]:
        answers = {
            "400": error(
                "The request is malformed or a value is refused; `errors` names the field."
            ),
            # A token that is wrong, or whose user is inactive, is refused even where no
            # login is needed; with none, an operation that needs a login answers 401 too.
            "401": error("The credentials are missing, wrong, or of an inactive account."),
            "406": error("The Accept header asks for something other than JSON."),
            "429": error("Too many requests: wait Retry-After seconds."),
        }
        if self._needs_more_than_anyone() or self.method not in permissions.SAFE_METHODS:
            # Staff-only operations; and a session (cookie) client without its CSRF token.
            answers["403"] = error("The caller may not do this.")
        if "{" in self.path:
            answers["404"] = error("No such object, or not one the caller may see.")
        # A body is parsed (and its media type refused) only where the operation reads one.
        if self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None:
            answers["415"] = error("The body's media type is not one the operation takes.")
        return answers

    def _needs_more_than_anyone(self) -> bool:
        return any(
            not isinstance(permission, permissions.AllowAny)
            and not isinstance(permission, permissions.IsAuthenticated)
            for permission in self.view.get_permissions()
        )
