"""Input that no view should have to think about, refused where it enters."""

from django.http import HttpResponseBadRequest, JsonResponse


class RefuseNulMiddleware:
    """A NUL in a query parameter is never meant, and PostgreSQL text cannot hold one: without
    this, `/api/accelerators/?host=%00` reached the database and answered 500. Form fields
    and API fields refuse NUL themselves (Django's ProhibitNullCharactersValidator)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if any("\x00" in key or "\x00" in value for key, value in _items(request.GET)):
            message = "A query parameter contains a NUL character."
            if request.path.startswith("/api/"):
                return JsonResponse({"code": "bad_request", "message": message}, status=400)
            return HttpResponseBadRequest(message, content_type="text/plain")
        return self.get_response(request)


def _items(query):
    for key, values in query.lists():
        for value in values:
            yield key, value
