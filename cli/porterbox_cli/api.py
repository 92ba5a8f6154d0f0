"""The portal's REST API over httpx: token auth, JSON in and out, errors mapped to exit codes.

Every API error is `{"code", "message", ...}` (the portal's portal/api/errors.py); an answer
that is not one (a proxy's HTML page) still becomes a precise error, never a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from porterbox_cli import __version__
from porterbox_cli.config import Portal
from porterbox_cli.errors import NOT_LOGGED_IN, REFUSED, UNREACHABLE, CliError

TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class Api:
    def __init__(self, portal: Portal):
        self.portal = portal
        headers = {"Accept": "application/json", "User-Agent": f"porterbox/{__version__}"}
        if portal.token:
            headers["Authorization"] = f"Token {portal.token}"
        self.client = httpx.Client(base_url=portal.url, headers=headers, timeout=TIMEOUT)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach {self.portal.url}: {exc}", "unreachable", UNREACHABLE
            ) from None
        if response.is_success:
            return response
        raise self._error(response)

    def _error(self, response: httpx.Response) -> CliError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "code" in body and "message" in body:
            message, code = str(body["message"]), str(body["code"])
        else:
            body = {}
            message, code = f"{response.status_code} {response.reason_phrase}", "http_error"
            message += f" from {response.request.url}"
        status = response.status_code
        if status == 401:
            message += f" (log in again: porterbox login {self.portal.url})"
            return CliError(message, code, NOT_LOGGED_IN, body)
        if status == 429 and (wait := response.headers.get("Retry-After")):
            message += f" (retry after {wait} s)"
        return CliError(message, code, REFUSED if status < 500 else UNREACHABLE, body)

    def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None and v != ""}
        return self.request("GET", path, params=query).json()

    def post(self, path: str, body: dict | None = None, **params: Any) -> Any:
        return self.request("POST", path, json=body, params=params or None).json()

    def all_pages(self, path: str, **params: Any) -> list:
        """Every result of a paginated list (limit/offset), following `next`."""
        results: list = []
        page = self.get(path, limit=1000, **params)
        while True:
            if isinstance(page, list):  # an unpaginated list
                return page
            results.extend(page["results"])
            if not page.get("next"):
                return results
            page = self.request("GET", page["next"]).json()

    def download(self, path: str, target: Path) -> int:
        """Stream a file to `target` (written beside it, then renamed); its size in bytes."""
        partial = target.with_name(f".{target.name}.part")
        try:
            with self.client.stream("GET", path) as response:
                if not response.is_success:
                    response.read()
                    raise self._error(response)
                size = 0
                with partial.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                        size += len(chunk)
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise CliError(
                f"cannot reach {self.portal.url}: {exc}", "unreachable", UNREACHABLE
            ) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(target)
        return size

    def log_chunks(self, job_id: int, offset: int = 0) -> Iterator[dict]:
        """Pages of a job's log from `offset` until the answer's end (not waiting for more)."""
        while True:
            chunk = self.get(f"/api/jobs/{job_id}/log/", offset=offset)
            yield chunk
            if chunk["next_offset"] <= offset or chunk["next_offset"] >= chunk["size"]:
                return
            offset = chunk["next_offset"]
