"""Reading source packages: Sources indices, .dsc files and the debian directory's control
files, with python-debian's deb822, and fetching them (issue 17).

Where a package says which hardware its tests need:

- ``Requires-Hwspec`` in the .dsc and the archive's Sources: dpkg copies it there from
  ``XS-Requires-Hwspec`` in debian/control (tests/packages/builder.py checks what dpkg writes);
- ``X-Requires-Hwspec`` (or ``XS-``) in debian/control's Source stanza, seen only by reading
  the debian directory out of the source's tarball;
- a test stanza's own ``X-Requires-Hwspec`` in debian/tests/control, overriding the package's.

autopkgtest itself (5.28) does not know that last field: a stanza carrying it is skipped with
"SKIP unknown field X-requires-hwspec" (lib/testdesc.py, _debian_check_unknown_fields). The
run must therefore hand autopkgtest a tests/control without it (--override-control).

Pure: no Django model is imported, so the watcher, the upload form and the runs all read
packages the same way. Nothing here raises past its callers' pages: reading a package gives a
``SourceTests`` whose ``error`` says what is malformed; fetching raises ``SourceError`` with a
message fit for a person.

Tarballs are read in memory, member by member (``tarfile`` streaming), never unpacked to disk:
a package is untrusted input, and only two small files of it are wanted.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from debian import deb822

from portal.inventory.hwspec import InvalidHwspec, parse_requirement

# The spellings of the package's field, in the order they are trusted: the .dsc/Sources form
# that dpkg wrote, then debian/control's two.
HWSPEC_FIELDS = ("Requires-Hwspec", "XS-Requires-Hwspec", "X-Requires-Hwspec")

MAX_INDEX = 256 << 20  # a Sources index, compressed (Debian's main: about 11 MiB as .xz)
MAX_UNPACKED_INDEX = 1 << 30  # ... and decompressed (Debian's main: about 60 MiB)
MAX_DSC = 1 << 20
MAX_DEBIAN_TARBALL = 64 << 20  # a .debian.tar.* or, for a native package, the whole tarball
MAX_UNPACKED_TARBALL = 2 << 30  # read through, never stored
MAX_UNPACKED_DIFF = 256 << 20  # a 1.0 package's .diff.gz, read whole
MAX_CONTROL = 1 << 20  # debian/control or debian/tests/control
MAX_SOURCE_FILE = 4 << 30  # any file of a source package, fetched to disk for a run
TIMEOUT = 30  # seconds without an answer from a server

# Debian policy 5.6.1 (source package names) and 5.6.12 (versions), as the models check them.
SOURCE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*")
# A file a .dsc lists: a plain name in the .dsc's own directory.
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9+.~_-]*")


class SourceError(Exception):
    """A package or an archive could not be read; the message says why, for a person.
    ``missing``: the server said there is no such file (404, or no such file:// path)."""

    def __init__(self, message: str, *, missing: bool = False):
        super().__init__(message)
        self.missing = missing


@dataclass
class DebianDir:
    """The two files of the debian directory that say what the tests need."""

    control: str
    tests_control: str | None = None  # None: the package has no debian/tests/control


@dataclass
class SourceTests:
    """What a source package's tests need, as SourcePackage stores it."""

    name: str = ""
    version: str = ""
    maintainer: str = ""
    hwspec: str = ""  # the package's field as written (whitespace folded); "" for none
    testsuite: str = ""
    # [{"tests": ["smoke"], "hwspec": "cuda", "restrictions": ["needs-root"]}, ...]: each
    # stanza's hwspec its own field or else the package's.
    stanzas: list[dict] = field(default_factory=list)
    error: str = ""  # why a field could not be read; "" when all is well
    # Whether the package or any of its test stanzas has a hwspec field (even ``cpu``).
    declares_hwspec: bool = False


# -- fields ----------------------------------------------------------------------------------


def _fold(value: str) -> str:
    return " ".join(value.split())


def hwspec_field(paragraph) -> str | None:
    """The hwspec field of a paragraph in any spelling, whitespace folded; None if absent."""
    named = _named_hwspec(paragraph)
    return named[1] if named else None


def _named_hwspec(paragraph) -> tuple[str, str] | None:
    for name in HWSPEC_FIELDS:
        if name in paragraph:
            return name, _fold(paragraph[name])
    return None


def hwspec_error(value: str, where: str) -> str:
    """ "" if ``value`` is a valid hwspec field, else the parser's message and where it was."""
    if not value:
        return f"{where}: the hardware spec field is empty; remove it or name a spec such as cuda."
    try:
        parse_requirement(value)
    except InvalidHwspec as exc:
        return f"{where}: {exc}"
    return ""


# -- Sources indices and .dsc files ----------------------------------------------------------


def _limited_read(stream: IO[bytes] | io.BufferedIOBase, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise SourceError(f"{what} is larger than {limit >> 20} MiB, the most read.")
    return data


_OPENERS: dict[str, Callable[[IO[bytes]], io.BufferedIOBase]] = {
    ".xz": lzma.LZMAFile,
    ".gz": lambda stream: gzip.GzipFile(fileobj=stream),
    ".bz2": bz2.BZ2File,
}


def decompress(data: bytes, name: str, limit: int = MAX_UNPACKED_INDEX) -> bytes:
    """``data`` decompressed as its file name says (.xz, .gz, .bz2 or plain), at most ``limit``
    bytes."""
    opener = _OPENERS.get(Path(name).suffix)
    if opener is None:
        return data if len(data) <= limit else _limited_read(io.BytesIO(data), limit, name)
    try:
        with opener(io.BytesIO(data)) as stream:
            return _limited_read(stream, limit, name)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise SourceError(f"{name} is not a valid compressed file: {exc}") from None


def read_index(data: bytes, name: str) -> Iterator[deb822.Sources]:
    """The paragraphs of a Sources index (``name`` says its compression)."""
    text = decompress(data, name).decode("utf-8", errors="replace")
    yield from deb822.Sources.iter_paragraphs(io.StringIO(text), use_apt_pkg=False)


def parse_dsc(data: bytes | str, name: str = "the .dsc") -> deb822.Dsc:
    """A .dsc (its OpenPGP signature, if any, set aside unchecked), with the fields a run
    needs present and sane."""
    if isinstance(data, bytes):
        if len(data) > MAX_DSC:
            raise SourceError(f"{name} is larger than {MAX_DSC >> 20} MiB.")
        data = data.decode("utf-8", errors="replace")
    try:
        dsc = deb822.Dsc(data)
    except ValueError as exc:
        raise SourceError(f"{name} cannot be read: {exc}") from None
    for key in ("Format", "Source", "Version", "Files", "Checksums-Sha256"):
        if not dsc.get(key) or (isinstance(dsc[key], str) and not dsc[key].strip()):
            raise SourceError(f"{name} has no {key} field: is it a Debian source control file?")
    if not SOURCE_NAME.fullmatch(dsc["Source"]):
        raise SourceError(f"{name}: {dsc['Source'][:60]!r} is not a Debian source package name.")
    if not VERSION.fullmatch(dsc["Version"]):
        raise SourceError(f"{name}: {dsc['Version'][:60]!r} is not a Debian version.")
    dsc_files(dsc, name)  # checks the file list
    return dsc


def dsc_files(paragraph, name: str = "the .dsc") -> list[dict]:
    """[{"name", "size", "sha256"}] from a .dsc's or Sources stanza's Checksums-Sha256, each a
    plain file name, every file of Files among them."""
    try:
        files = [
            {"name": e["name"], "size": int(e["size"]), "sha256": e["sha256"].lower()}
            for e in paragraph.get("Checksums-Sha256", [])
        ]
        listed = {e["name"] for e in paragraph.get("Files", [])}
    except (KeyError, ValueError, TypeError):
        raise SourceError(f"{name}: its Files or Checksums-Sha256 field is malformed.") from None
    if not files:
        raise SourceError(f"{name} has no Checksums-Sha256 field.")
    for f in files:
        if not FILE_NAME.fullmatch(f["name"]) or not re.fullmatch(r"[0-9a-f]{64}", f["sha256"]):
            raise SourceError(f"{name}: {f['name'][:80]!r} is not a file a .dsc can list.")
    missing = listed - {f["name"] for f in files}
    if missing:
        raise SourceError(f"{name}: {sorted(missing)[0]!r} has no SHA256 in Checksums-Sha256.")
    return files


def debian_dir_file(paragraph, name: str = "the package") -> str:
    """The name of the file that holds the debian directory, by the source format: the
    .debian.tar.* of 3.0 (quilt), the one tarball of 3.0 (native), the .diff.gz of 1.0 (or
    its tarball, for a native 1.0). Never the orig tarball."""
    fmt = _fold(paragraph.get("Format", "1.0"))
    names = [f["name"] for f in dsc_files(paragraph, name) if not f["name"].endswith(".dsc")]
    if fmt == "3.0 (quilt)":
        found = [n for n in names if re.search(r"\.debian\.tar\.(xz|gz|bz2)$", n)]
    elif fmt == "3.0 (native)":
        found = [n for n in names if re.search(r"\.tar\.(xz|gz|bz2)$", n)]
    elif fmt == "1.0":
        found = [n for n in names if n.endswith(".diff.gz")] or [
            n for n in names if n.endswith(".tar.gz") and ".orig." not in n
        ]
    else:
        raise SourceError(f"{name}: source format {fmt[:40]!r} is not read here.")
    if len(found) != 1:
        raise SourceError(f"{name}: no single file holds its debian directory ({fmt}).")
    return found[0]


# -- the debian directory, read in memory ----------------------------------------------------


class _Limited(io.RawIOBase):
    """A stream that refuses to give more than ``limit`` bytes: a bound on what a tarball may
    decompress to, since it is read through."""

    def __init__(self, stream: io.BufferedIOBase, limit: int, what: str):
        self.stream, self.left, self.what = stream, limit, what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(min(len(buffer), self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise SourceError(f"{self.what} unpacks to more than the most read.")
        buffer[: len(data)] = data
        return len(data)


def _member_key(path: str) -> tuple[int, str] | None:
    """("control" or "tests/control", and how deep) for a member that is one of the two files,
    with or without a top directory; None for any other member."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    for wanted in (["debian", "control"], ["debian", "tests", "control"]):
        n = len(wanted)
        if parts[-n:] == wanted and len(parts) in (n, n + 1):
            return len(parts) - n, "/".join(wanted[1:])
    return None


def read_debian_tarball(data: bytes, name: str) -> DebianDir:
    """debian/control and debian/tests/control from a tarball's bytes, read member by
    member in memory. Members may sit under a top directory (``foo-1.0/debian/...``, as in a
    native tarball) or not (``debian/...``, as in a .debian.tar); the shallower wins."""
    opener = _OPENERS.get(Path(name).suffix)
    if opener is None:
        raise SourceError(f"{name}: not a compressed tarball (.tar.xz, .tar.gz or .tar.bz2).")
    found: dict[str, tuple[int, str]] = {}
    try:
        with opener(io.BytesIO(data)) as raw:
            stream = io.BufferedReader(_Limited(raw, MAX_UNPACKED_TARBALL, name))
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    key = _member_key(member.name)
                    if key is None:
                        continue
                    depth, which = key
                    if which in found and found[which][0] <= depth:
                        continue
                    if not member.isfile():
                        raise SourceError(f"{name}: {member.name} is not a plain file.")
                    if member.size > MAX_CONTROL:
                        raise SourceError(f"{name}: {member.name} is larger than 1 MiB.")
                    extracted = tar.extractfile(member)
                    if extracted is None:  # not reached: isfile() was checked
                        raise SourceError(f"{name}: {member.name} cannot be read.")
                    text = extracted.read().decode("utf-8", errors="replace")
                    found[which] = (depth, text)
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
        raise SourceError(f"{name} is not a valid tarball: {exc}") from None
    if "control" not in found:
        raise SourceError(f"{name} has no debian/control.")
    tests = found.get("tests/control")
    return DebianDir(found["control"][1], tests[1] if tests else None)


_DIFF_FILE = re.compile(r"^\+\+\+ (?:[^/\n]+/)?(debian/(?:tests/)?control)(?:\t.*)?$")
_NEW_HUNK = re.compile(r"^@@ -0,0 \+1(?:,(\d+))? @@")


def read_debian_diff(data: bytes, name: str) -> DebianDir:
    """debian/control and debian/tests/control from a 1.0 package's .diff.gz, where the diff
    creates them (it always does, unless upstream shipped a debian directory: then the orig
    tarball would be needed, and that is said)."""
    lines = decompress(data, name, MAX_UNPACKED_DIFF).decode("utf-8", "replace").split("\n")
    found: dict[str, str] = {}
    for i, line in enumerate(lines):
        match = _DIFF_FILE.match(line)
        if not match:
            continue
        which = match.group(1).removeprefix("debian/")
        hunk = _NEW_HUNK.match(lines[i + 1]) if i + 1 < len(lines) else None
        if hunk is None:
            raise SourceError(
                f"{name} changes {match.group(1)} rather than creating it: the file is in the "
                "orig tarball, which is not read. Use source format 3.0 (quilt)."
            )
        count = int(hunk.group(1) or 1)
        body = lines[i + 2 : i + 2 + count]
        if len(body) < count or any(not b.startswith("+") for b in body):
            raise SourceError(f"{name}: the hunk of {match.group(1)} is malformed.")
        found[which] = "\n".join(b[1:] for b in body) + "\n"
    if "control" not in found:
        raise SourceError(f"{name} does not create debian/control.")
    return DebianDir(found["control"], found.get("tests/control"))


def read_debian_dir(data: bytes, name: str) -> DebianDir:
    """The debian directory's control files from the file ``debian_dir_file`` named."""
    if name.endswith(".diff.gz"):
        return read_debian_diff(data, name)
    return read_debian_tarball(data, name)


# -- the tests -------------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    """Comments as autopkgtest drops them (lib/testdesc.py parse_rfc822): a line starting
    with '#' entirely, and anything after a '#' elsewhere."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if "#" in line:
            line = line.split("#", 1)[0]
            if not line.strip():
                continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def _split(value: str) -> list[str]:
    return value.replace(",", " ").split()


def _stanza_names(stanza, position: int, counter: list[int]) -> list[str]:
    """The test names autopkgtest gives a stanza: its Tests, or for a Test-Command
    ``command<N>`` by position among the command stanzas (or its test-name feature)."""
    if "Tests" in stanza:
        names = _split(stanza["Tests"])
        if not names:
            raise SourceError(f"debian/tests/control stanza {position}: Tests is empty.")
        if "Test-Command" in stanza:
            raise SourceError(
                f"debian/tests/control stanza {position}: give Tests or Test-Command, not both."
            )
        return names
    if "Test-Command" in stanza:
        for feature in _split(stanza.get("Features", "")):
            if feature.startswith("test-name="):
                return [feature.removeprefix("test-name=")]
        counter[0] += 1
        return [f"command{counter[0]}"]
    raise SourceError(f"debian/tests/control stanza {position}: no Tests or Test-Command field.")


def read_tests(paragraph, debian: DebianDir | None) -> SourceTests:
    """What a package's tests need, from its .dsc or Sources stanza and, when read, its
    debian directory. Never raises: what is malformed goes into ``error``."""
    result = SourceTests(
        name=paragraph.get("Source") or paragraph.get("Package", ""),
        version=paragraph.get("Version", ""),
        maintainer=_fold(paragraph.get("Maintainer", "")),
        testsuite=_fold(paragraph.get("Testsuite", "")),
    )
    errors = []
    source_stanza = None
    if debian is not None:
        try:
            source_stanza = deb822.Deb822(_strip_comments(debian.control))
        except ValueError as exc:
            errors.append(f"debian/control cannot be read: {exc}")
    package, where = _named_hwspec(paragraph), "The .dsc's"
    if package is None and source_stanza is not None:
        package, where = _named_hwspec(source_stanza), "debian/control's"
    if package is not None:
        result.hwspec = package[1]
        result.declares_hwspec = True
        if err := hwspec_error(package[1], f"{where} {package[0]}"):
            errors.append(err)
    if not result.testsuite and source_stanza is not None:
        result.testsuite = _fold(source_stanza.get("Testsuite", ""))
    if debian is not None and debian.tests_control is not None:
        if not result.testsuite:
            result.testsuite = "autopkgtest"  # as dpkg-source says it
        counter = [0]
        text = _strip_comments(debian.tests_control)
        for position, stanza in enumerate(deb822.Deb822.iter_paragraphs(text), start=1):
            try:
                names = _stanza_names(stanza, position, counter)
            except SourceError as exc:
                errors.append(str(exc))
                continue
            own = hwspec_field(stanza)
            if own is not None:
                result.declares_hwspec = True
                where = f"debian/tests/control stanza {position} ({names[0]})"
                if err := hwspec_error(own, where):
                    errors.append(err)
            result.stanzas.append(
                {
                    "tests": names,
                    "hwspec": own if own is not None else result.hwspec,
                    "restrictions": _split(stanza.get("Restrictions", "")),
                }
            )
    result.error = "\n".join(errors)
    return result


def read_dsc_dir(dsc_path: Path) -> SourceTests:
    """What the tests of a .dsc on disk need, its files beside it (an upload, a run's input).
    Never raises."""
    dsc_path = Path(dsc_path)
    try:
        dsc = parse_dsc(_read_file(dsc_path, MAX_DSC), dsc_path.name)
        holder = debian_dir_file(dsc, dsc_path.name)
        data = _read_file(dsc_path.parent / holder, MAX_DEBIAN_TARBALL)
        return read_tests(dsc, read_debian_dir(data, holder))
    except SourceError as exc:
        return SourceTests(name=dsc_path.name, error=str(exc))


# A test stanza's own hwspec field, as the portal reads it (any case, any X[S]- spelling).
_HWSPEC_LINE = re.compile(r"(?i)^xs?-requires-hwspec\s*:")


def tests_control_for_autopkgtest(dsc_path: Path) -> str | None:
    """The package's debian/tests/control without its stanzas' hwspec fields, for
    autopkgtest --override-control; None when it has none (or cannot be read: the run then
    uses the package's own file). autopkgtest (5.28) skips a stanza that carries a field it
    does not know, so a per-test X-Requires-Hwspec would otherwise never run."""
    dsc_path = Path(dsc_path)
    try:
        dsc = parse_dsc(_read_file(dsc_path, MAX_DSC), dsc_path.name)
        holder = debian_dir_file(dsc, dsc_path.name)
        text = read_debian_dir(_read_file(dsc_path.parent / holder, MAX_DEBIAN_TARBALL), holder)
    except SourceError:
        return None
    if text.tests_control is None:
        return None
    kept, dropping = [], False
    for line in text.tests_control.splitlines(keepends=True):
        if _HWSPEC_LINE.match(line):
            dropping = True
            continue
        if dropping and line[:1] in (" ", "\t") and line.strip():
            continue  # the dropped field's continuation
        dropping = False
        kept.append(line)
    stripped = "".join(kept)
    return stripped if stripped != text.tests_control else None


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return _limited_read(f, limit, path.name)
    except OSError as exc:
        raise SourceError(f"Cannot read {path.name}: {exc.strerror}.") from None


# -- fetching --------------------------------------------------------------------------------


@dataclass
class Fetched:
    data: bytes
    etag: str = ""
    last_modified: str = ""
    not_modified: bool = False  # the server answered 304 to a conditional request


def _urlopen(url: str, *, allow_file: bool, timeout: float = TIMEOUT, headers=None):
    """The response to GET ``url``, or None for a 304 to a conditional request."""
    schemes = ("http://", "https://", "file://") if allow_file else ("http://", "https://")
    if not url.startswith(schemes):
        raise SourceError(f"{url[:200]} is not an {' or '.join(s[:-3] for s in schemes)} URL.")
    request = urllib.request.Request(  # noqa: S310 (schemes checked above)
        url, headers={"User-Agent": "porterbox-portal", **(headers or {})}
    )
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 304:
            return None
        raise SourceError(
            f"Cannot fetch {url}: the server answered {exc.code} {exc.reason}.",
            missing=exc.code in (404, 410),
        ) from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        missing = isinstance(exc.reason, FileNotFoundError)
        raise SourceError(f"Cannot fetch {url}: {reason}.", missing=missing) from None
    except (TimeoutError, OSError, ValueError) as exc:
        raise SourceError(f"Cannot fetch {url}: {exc}.") from None


def fetch_response(
    url: str,
    limit: int,
    *,
    timeout: float = TIMEOUT,
    allow_file: bool = True,
    headers: dict[str, str] | None = None,
) -> Fetched:
    """GET ``url`` (http, https, or file when ``allow_file``), at most ``limit`` bytes.

    Callers that fetch a URL a member gave pass ``allow_file=False``: a file:// URL is for
    archives staff configured, never a way to read the portal's own files."""
    response = _urlopen(url, allow_file=allow_file, timeout=timeout, headers=headers)
    if response is None:
        return Fetched(b"", not_modified=True)
    try:
        with response:
            return Fetched(
                _limited_read(response, limit, url),
                etag=response.headers.get("ETag", ""),
                last_modified=response.headers.get("Last-Modified", ""),
            )
    except (TimeoutError, OSError) as exc:
        raise SourceError(f"Cannot fetch {url}: {exc}.") from None


def fetch(url: str, limit: int, *, timeout: float = TIMEOUT, allow_file: bool = True) -> bytes:
    """The bytes at ``url``, at most ``limit``; SourceError with a clear message else."""
    return fetch_response(url, limit, timeout=timeout, allow_file=allow_file).data


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def _open(base: str, name: str, allow_file: bool) -> IO[bytes]:
    if "://" not in base:
        try:
            return open(Path(base) / name, "rb")
        except OSError as exc:
            raise SourceError(f"Cannot read {name}: {exc.strerror}.") from None
    response = _urlopen(join(base, name), allow_file=allow_file)
    if response is None:  # no conditional request was made
        raise SourceError(f"Cannot fetch {name}: the server answered 304.")
    return response


def _download(base: str, entry: dict, dest: Path, allow_file: bool) -> None:
    """Stream one file of a .dsc to ``dest``, checking its size and SHA256 as it comes."""
    name, size = entry["name"], int(entry["size"])
    digest = hashlib.sha256()
    got = 0
    try:
        with _open(base, name, allow_file) as source, open(dest, "wb") as out:
            while chunk := source.read(min(1 << 20, size - got + 1)):
                got += len(chunk)
                if got > size:
                    break
                digest.update(chunk)
                out.write(chunk)
    except (TimeoutError, OSError) as exc:
        dest.unlink(missing_ok=True)
        raise SourceError(f"Cannot fetch {name}: {exc}.") from None
    if got != size or digest.hexdigest() != entry["sha256"]:
        dest.unlink(missing_ok=True)
        raise SourceError(f"{name} does not match its SHA256: the archive may be mid-update.")


def fetch_source_files(
    base: str | Path,
    dsc_name: str,
    files: list[dict] | None,
    dest_dir: Path,
    *,
    allow_file: bool = True,
) -> list[Path]:
    """Copy a .dsc and every file it lists from ``base`` (a URL or a directory) into
    ``dest_dir``, each checked against its SHA256: the .dsc against ``files`` where given
    ([{"name", "size", "sha256"}] as SourcePackage.files keeps them), the others against the
    .dsc (and ``files``, which must agree). Returns the paths, the .dsc first; the run's input
    is built from them. Files go to disk as they come, never whole in memory."""
    base = str(base)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    known = {f["name"]: f for f in files or []}
    if not FILE_NAME.fullmatch(dsc_name) or not dsc_name.endswith(".dsc"):
        raise SourceError(f"{dsc_name[:80]!r} is not a .dsc file name.")
    with _open(base, dsc_name, allow_file) as source:
        data = _limited_read(source, MAX_DSC, dsc_name)
    if dsc_name in known:
        entry = known[dsc_name]
        if len(data) != int(entry["size"]) or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise SourceError(
                f"{dsc_name} does not match its SHA256: the archive may be mid-update."
            )
    dsc = parse_dsc(data, dsc_name)
    paths = [dest_dir / dsc_name]
    paths[0].write_bytes(data)
    for entry in dsc_files(dsc, dsc_name):
        other = known.get(entry["name"])
        if other is not None and other["sha256"] != entry["sha256"]:
            raise SourceError(f"{entry['name']}: the .dsc and the archive give different SHA256s.")
        if int(entry["size"]) > MAX_SOURCE_FILE:
            raise SourceError(f"{entry['name']} is larger than {MAX_SOURCE_FILE >> 30} GiB.")
        path = dest_dir / entry["name"]
        _download(base, entry, path, allow_file)
        paths.append(path)
    return paths
