"""Limits on what an API request may ask for: page sizes and offsets, JSON nesting."""

from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import JSONParser

MAX_LIMIT = 1000
# Beyond any real list; a larger offset would overflow the database's integers (a 500).
MAX_OFFSET = 2**31 - 1


class Pagination(LimitOffsetPagination):
    """?limit= up to MAX_LIMIT (larger asks get MAX_LIMIT), ?offset= within the database's range."""

    max_limit = MAX_LIMIT
    limit_query_description = (
        f"Number of results to return per page: at most {MAX_LIMIT} (a larger limit gives"
        f" {MAX_LIMIT})."
    )
    offset_query_description = "The initial index from which to return the results."

    def get_offset(self, request):
        return min(super().get_offset(request), MAX_OFFSET)


class BoundedJSONParser(JSONParser):
    """A body nested deeper than Python's recursion limit is a 400, not a RecursionError (500).
    Its size is bounded by Django's DATA_UPLOAD_MAX_MEMORY_SIZE before it is parsed."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - the body is nested too deeply.") from None
