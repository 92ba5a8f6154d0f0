"""The archive watcher: new versions of packages whose tests declare a hwspec (issue 17).

Per suite x component, an index is read only when it changed: its SHA256 in the suite's
Release file (InRelease, its signature set aside unchecked, or Release) is the index's
validator; an archive without a Release file is validated by the server's ETag or
Last-Modified (a conditional GET), or else by the index's own SHA256. A validator is stored
only when the whole index was read, so whatever failed is tried again on the next pass.

Only packages that declare a hwspec are stored: a hwspec field in the Sources stanza
(``Requires-Hwspec``), in debian/control's Source stanza or in any test stanza, whatever its
value, ``cpu`` included (a package that says ``cpu`` said something; whether it gets a run is
the caller's choice, see ``needs_accelerator``). Packages without a Testsuite naming
autopkgtest are not looked at.

The plain ``X-Requires-Hwspec`` spelling and per-test fields are only in the debian directory,
so the debian tarball (the .debian.tar.* or the native tarball, never the orig) of each new
version with tests is fetched and read in memory. What it says is kept in Django's cache under
the tarball's SHA256 (content-addressed, so never stale): packages with no hwspec are not
stored, and without the cache every change of the index would fetch them all again. At most
``fetch_budget`` tarballs are fetched per index and pass; the rest wait for the next pass.

An archive that cannot be read gets its error recorded on the index, nothing else changes, and
nothing is raised: the watcher runs from beat, and the archive's page says what went wrong.
"""

from __future__ import annotations

import hashlib
import logging

from debian import deb822
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from portal.inventory.hwspec import InvalidHwspec, parse_requirement
from portal.packages import sources
from portal.packages.models import Archive, SourceIndex, SourcePackage
from portal.packages.sources import DebianDir, SourceError, SourceTests

log = logging.getLogger(__name__)

CACHE_PREFIX = "packages:debian-dir:"
CACHE_SECONDS = 60 * 86400
FETCH_BUDGET = 2000  # debian tarballs per index and pass (about a minute over a fast mirror)
INDEX_NAMES = ("Sources.xz", "Sources.gz", "Sources")  # in the order preferred


def watch(archive: Archive, *, fetch_budget: int = FETCH_BUDGET) -> list[SourcePackage]:
    """Read the archive's changed Sources indices; return the new package versions stored."""
    new: list[SourcePackage] = []
    for suite in archive.suites:
        release: dict[str, dict] | None = None
        release_error = ""
        try:
            release = read_release(archive.url, suite)
        except SourceError as exc:
            release_error = str(exc)
        for component in archive.components:
            index, _ = SourceIndex.objects.get_or_create(
                archive=archive, suite=suite, component=component
            )
            try:
                if release_error:
                    raise SourceError(release_error)
                new += _watch_index(archive, index, release, fetch_budget)
            except SourceError as exc:
                log.warning("archive %s %s/%s: %s", archive.name, suite, component, exc)
                SourceIndex.objects.filter(pk=index.pk).update(error=str(exc))
    return new


def read_release(url: str, suite: str) -> dict[str, dict] | None:
    """{"main/source/Sources.xz": {"sha256", "size", "name"}, ...} from the suite's InRelease
    or Release; None when the archive has neither (a flat mirror, a test archive)."""
    for name in ("InRelease", "Release"):
        try:
            data = sources.fetch(sources.join(url, f"dists/{suite}/{name}"), sources.MAX_DSC * 16)
        except SourceError as exc:
            if exc.missing:
                continue
            raise
        release = deb822.Release(data.decode("utf-8", errors="replace"))
        try:
            return {e["name"]: e for e in release.get("SHA256", [])}
        except (KeyError, TypeError):
            raise SourceError(f"dists/{suite}/{name} has a malformed SHA256 field.") from None
    return None


def _fetch_index(
    archive: Archive, index: SourceIndex, release: dict[str, dict] | None
) -> tuple[str, str, bytes] | None:
    """(validator, file name, bytes) of the index, or None when it has not changed."""
    base = f"dists/{index.suite}/{index.component}/source"
    if release is not None:
        for name in INDEX_NAMES:
            entry = release.get(f"{index.component}/source/{name}")
            if entry is not None:
                break
        else:
            raise SourceError(
                f"dists/{index.suite}/Release lists no {index.component}/source/Sources index."
            )
        validator = f"sha256:{entry['sha256']}"
        if validator == index.validator:
            return None
        url = sources.join(archive.url, f"{base}/{name}")
        data = sources.fetch(url, sources.MAX_INDEX)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SourceError(
                f"{url} does not match the SHA256 of its Release file: the archive may be "
                "mid-update; it is read again on the next pass."
            )
        return validator, name, data
    headers = {}
    if index.validator.startswith("etag:"):
        headers["If-None-Match"] = index.validator.removeprefix("etag:")
    elif index.validator.startswith("last-modified:"):
        headers["If-Modified-Since"] = index.validator.removeprefix("last-modified:")
    for name in INDEX_NAMES:
        url = sources.join(archive.url, f"{base}/{name}")
        try:
            fetched = sources.fetch_response(url, sources.MAX_INDEX, headers=headers)
        except SourceError as exc:
            if exc.missing and name != INDEX_NAMES[-1]:
                continue
            raise
        if fetched.not_modified:
            return None
        if fetched.etag:
            validator = f"etag:{fetched.etag}"
        elif fetched.last_modified:
            validator = f"last-modified:{fetched.last_modified}"
        else:
            validator = f"sha256:{hashlib.sha256(fetched.data).hexdigest()}"
        return None if validator == index.validator else (validator, name, fetched.data)
    return None  # not reached: the last name raises


def _watch_index(
    archive: Archive, index: SourceIndex, release: dict[str, dict] | None, fetch_budget: int
) -> list[SourcePackage]:
    fetched = _fetch_index(archive, index, release)
    if fetched is None:
        if index.error:  # reachable again, and unchanged since it was last read
            SourceIndex.objects.filter(pk=index.pk).update(error="")
        return []
    validator, name, data = fetched
    known = set(SourcePackage.objects.filter(archive=archive).values_list("name", "version"))
    found: list[tuple[deb822.Sources, SourceTests]] = []
    declaring = 0
    failures: list[str] = []
    budget = [fetch_budget]
    for paragraph in sources.read_index(data, name):
        if "autopkgtest" not in paragraph.get("Testsuite", ""):
            continue
        key = (paragraph.get("Package", ""), paragraph.get("Version", ""))
        if key in known:
            declaring += 1  # only packages that declare a hwspec are stored
            continue
        if not (sources.SOURCE_NAME.fullmatch(key[0]) and sources.VERSION.fullmatch(key[1])):
            failures.append(f"A stanza of {name} has no valid Package and Version.")
            continue
        try:
            tests = read_package(archive.url, paragraph, budget)
        except SourceError as exc:
            failures.append(str(exc))
            continue
        if tests.declares_hwspec:
            found.append((paragraph, tests))
            declaring += 1
            known.add(key)  # a second stanza of the same version is not stored twice
    created = _store(archive, index, found)
    fields: dict = {"read_at": timezone.now(), "packages": declaring, "error": ""}
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        fields["error"] = failures[0] + more
    else:
        fields["validator"] = validator
    SourceIndex.objects.filter(pk=index.pk).update(**fields)
    return created


def _store(
    archive: Archive, index: SourceIndex, found: list[tuple[deb822.Sources, SourceTests]]
) -> list[SourcePackage]:
    """Store the new versions in one transaction (idempotent: a version another pass or
    another suite stored first is left as it is)."""
    created = []
    with transaction.atomic():
        for paragraph, tests in found:
            package, made = SourcePackage.objects.get_or_create(
                archive=archive,
                name=tests.name,
                version=tests.version,
                defaults={
                    "suite": index.suite,
                    "component": index.component,
                    "maintainer": tests.maintainer[:300],
                    "hwspec": tests.hwspec[:200],
                    "tests": tests.stanzas,
                    "testsuite": tests.testsuite[:200],
                    "error": tests.error,
                    "directory": paragraph.get("Directory", "")[:300],
                    "files": sources.dsc_files(paragraph, tests.name),
                },
            )
            if made:
                created.append(package)
    return created


def read_package(url: str, paragraph, budget: list[int]) -> SourceTests:
    """What a Sources stanza's tests need, its debian directory read from the archive (or the
    cache). Raises SourceError only for what may succeed later (a fetch, the budget); what is
    malformed goes into the result's error."""
    try:
        holder = sources.debian_dir_file(paragraph, f"src:{paragraph.get('Package', '')}")
        entry = next(f for f in sources.dsc_files(paragraph) if f["name"] == holder)
    except SourceError as exc:
        return _with_error(sources.read_tests(paragraph, None), str(exc))
    key = CACHE_PREFIX + entry["sha256"]
    debian = cache.get(key)
    stale = debian is not None and debian.get("control") is None and not debian.get("error")
    if debian is None or (stale and sources.hwspec_field(paragraph) is not None):
        debian = _fetch_debian_dir(url, paragraph, entry, budget)
        cache.set(key, _for_cache(debian), CACHE_SECONDS)
    if debian.get("error"):
        return _with_error(sources.read_tests(paragraph, None), debian["error"])
    if debian["control"] is None:  # no hwspec anywhere in it, nor in the stanza
        return SourceTests(name=paragraph["Package"], version=paragraph["Version"])
    return sources.read_tests(paragraph, DebianDir(debian["control"], debian["tests_control"]))


def _fetch_debian_dir(url: str, paragraph, entry: dict, budget: list[int]) -> dict:
    if budget[0] <= 0:
        raise SourceError(
            "More new versions than one pass reads; the rest are read on the next pass."
        )
    budget[0] -= 1
    file_url = sources.join(url, f"{paragraph.get('Directory', '')}/{entry['name']}")
    data = sources.fetch(file_url, sources.MAX_DEBIAN_TARBALL)
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SourceError(f"{file_url} does not match its SHA256 in the Sources index.")
    try:
        debian = sources.read_debian_dir(data, entry["name"])
    except SourceError as exc:
        return {"error": str(exc)}
    return {"control": debian.control, "tests_control": debian.tests_control}


def _for_cache(debian: dict) -> dict:
    """Only a debian directory that mentions a hwspec is worth its room in the cache; the
    others are kept as a mark that they declare none."""
    text = (debian.get("control") or "") + (debian.get("tests_control") or "")
    if debian.get("error") or "hwspec" in text.lower():
        return debian
    return {"control": None}


def _with_error(result: SourceTests, error: str) -> SourceTests:
    result.error = "\n".join(filter(None, [error, result.error]))
    return result


def needs_accelerator(package: SourcePackage) -> bool:
    """Whether a stored package's tests need more than a CPU (and are readable): those get a
    run of their own when a new version comes."""
    if package.error:
        return False
    fields = [package.hwspec] + [s.get("hwspec", "") for s in package.tests]
    try:
        return any(h.kind != "cpu" for f in fields if f for h in parse_requirement(f))
    except InvalidHwspec:
        return False
