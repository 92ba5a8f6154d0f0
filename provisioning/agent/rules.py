"""The rules of a training job's request (docs/agent.md, "Training jobs"), in one place for
both sides: the agent checks them on job-start, the portal at submission, so that a job is
refused with a clear message there rather than failing on a host later.

Pure and standard library only (the portal imports it; hosts run it without Django): nothing
here runs a command or writes a file. Refusals are ``protocol.AgentError``.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
import zlib
from typing import BinaryIO

from provisioning.agent.protocol import VISIBLE_DEVICES, AgentError, check_integer, check_utf8

# "j<job id>", or "j<job id>-<attempt>" once requeued; never a reservation's "r<id>".
JOB = re.compile(r"j[1-9][0-9]{0,17}(-[1-9][0-9]{0,2})?")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
MAX_ENV = 64
MAX_ENV_VALUE_BYTES = 4 * 1024
MAX_SCRIPT_BYTES = 64 * 1024
MAX_WALLTIME_S = 30 * 24 * 3600
MAX_GRACE_S = 600
# An archive input travels as raw bytes after the request line and is spooled to disk, never
# held in memory: this bounds what one request may announce, the portal's limit is lower.
MAX_ARCHIVE_BYTES = 4 * 1024**3
# A few hundred KiB of gzip can unpack to a GiB; past these the archive is refused unread.
MAX_ARCHIVE_MEMBERS = 100_000
MAX_ARCHIVE_CONTENT = 4 * 1024**3
GIT_HOST = r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}(?::[0-9]{1,5})?"
GIT_URL = re.compile(rf"https://{GIT_HOST}(?:/[A-Za-z0-9_.~%+=,:@/-]*)?")
MAX_GIT_URL = 1000
GIT_REF = re.compile(r"[A-Za-z0-9._/-]{1,100}")

# What the loader, the shell or an interpreter reads before the script's first line, and what
# the agent sets itself (the devices' selection, the account, the output directory).
DENIED_ENV = frozenset(
    {
        *("PATH", "HOME", "SHELL", "USER", "LOGNAME", "IFS", "ENV", "BASH_ENV", "CDPATH"),
        *("SHELLOPTS", "BASHOPTS", "PS4", "GLIBC_TUNABLES", "GCONV_PATH", "NODE_OPTIONS"),
        *VISIBLE_DEVICES.values(),
        *("CUDA_DEVICE_ORDER", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL"),
        *("NVIDIA_VISIBLE_DEVICES", "ONEAPI_DEVICE_SELECTOR"),
    }
)
DENIED_ENV_PREFIXES = ("LD_", "PYTHON", "PERL5", "RUBY", "PORTERBOX_", "SCHROOT_")
# What glibc removes from the environment of a setuid program (its unsecvars.h), as schroot
# is: refused, rather than silently missing in the job.
SETUID_DROPPED_ENV = frozenset(
    {
        *("GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "MALLOC_TRACE", "NIS_PATH"),
        *("NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR"),
    }
)
INPUT_SHAPES: tuple[set[str], ...] = (set(), {"git"}, {"git", "ref"}, {"archive_bytes"})
# A package test run's .dsc, as dpkg names the file: a source package's name (Debian Policy
# 5.6.1), "_", its version without the epoch (Policy 5.6.12: upstream version starting with a
# digit, an optional Debian revision; no colon), ".dsc". Nothing else can reach autopkgtest's
# argv, and no name can start with "-".
DSC = re.compile(r"[a-z0-9][a-z0-9+.-]{1,99}_[0-9][A-Za-z0-9.+~-]{0,99}\.dsc")
# A test's name in debian/tests/control (autopkgtest's README.package-tests: the Tests field's
# names, or "commandN" for a Test-Command), the stricter for an argv: never a leading "-".
TEST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
MAX_TESTS = 50
# The one name a run's replacement debian/tests/control may have in its input (check_autopkgtest).
OVERRIDE_CONTROL = "porterbox-tests-control"


def check_job(value: object) -> str:
    if not isinstance(value, str) or not JOB.fullmatch(value):
        raise AgentError("bad_job", f"job: must match ^{JOB.pattern}$")
    return value


def check_script(value: object) -> str:
    if not isinstance(value, str):
        raise AgentError("bad_script", "script: must be a string")
    if "\0" in value:
        raise AgentError("bad_script", "script: contains a NUL character")
    if len(check_utf8(value, "bad_script", "script")) > MAX_SCRIPT_BYTES:
        raise AgentError("bad_script", "script: larger than 64 KiB")
    return value


def check_env(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_ENV:
        raise AgentError("bad_env", f"env: must be an object of at most {MAX_ENV} variables")
    for name, text in value.items():
        if not ENV_NAME.fullmatch(name):
            raise AgentError("bad_env", f"env: a name must match ^{ENV_NAME.pattern}$")
        if name in DENIED_ENV or name.startswith(DENIED_ENV_PREFIXES):
            raise AgentError("bad_env", f"env.{name}: set by the host, or read before the job")
        if name in SETUID_DROPPED_ENV:
            raise AgentError("bad_env", f"env.{name}: schroot (setuid) would not pass it on")
        if not isinstance(text, str) or "\0" in text:
            raise AgentError("bad_env", f"env.{name}: must be a string without NUL")
        if len(check_utf8(text, "bad_env", f"env.{name}")) > MAX_ENV_VALUE_BYTES:
            raise AgentError("bad_env", f"env.{name}: longer than 4 KiB")
    return dict(sorted(value.items()))


def check_autopkgtest(value: object) -> dict | None:
    """A package test run instead of a script: {"dsc": "<source>_<version>.dsc", "tests":
    [name, ...]} (0..50 names; none: every test of the package), or None (a script job).
    Optional "control": OVERRIDE_CONTROL, the input's copy of debian/tests/control that
    autopkgtest reads instead of the package's (autopkgtest --override-control): the portal
    sends one without the stanzas' X-Requires-Hwspec fields, which autopkgtest (5.28) takes
    for unknown fields and skips the stanza over."""
    if value is None:
        return None
    keys = set(value) if isinstance(value, dict) else set()
    if not isinstance(value, dict) or keys - {"control"} != {"dsc", "tests"}:
        raise AgentError("bad_autopkgtest", "autopkgtest: must be an object with dsc and tests")
    if "control" in value and value["control"] != OVERRIDE_CONTROL:
        message = f"autopkgtest.control: must be {OVERRIDE_CONTROL!r} (a file of the input)"
        raise AgentError("bad_autopkgtest", message)
    dsc, tests = value["dsc"], value["tests"]
    if not isinstance(dsc, str) or not DSC.fullmatch(dsc):
        raise AgentError("bad_autopkgtest", f"autopkgtest.dsc: must match ^{DSC.pattern}$")
    if not isinstance(tests, list) or len(tests) > MAX_TESTS:
        message = f"autopkgtest.tests: must be a list of at most {MAX_TESTS} test names"
        raise AgentError("bad_autopkgtest", message)
    for name in tests:
        if not isinstance(name, str) or not TEST_NAME.fullmatch(name):
            message = f"autopkgtest.tests: a name must match ^{TEST_NAME.pattern}$"
            raise AgentError("bad_autopkgtest", message)
    if len(set(tests)) != len(tests):
        raise AgentError("bad_autopkgtest", "autopkgtest.tests: a name is given twice")
    cleaned = {"dsc": dsc, "tests": list(tests)}
    if "control" in value:
        cleaned["control"] = OVERRIDE_CONTROL
    return cleaned


def check_job_kind(script: str, autopkgtest: dict | None, input: dict) -> None:
    """Exactly one of a script and a package test run; a test run's package comes as the
    archive input (the .dsc and its files, extracted in input/)."""
    if autopkgtest is None and not script:
        raise AgentError("bad_script", "script: empty, and no autopkgtest to run instead")
    if autopkgtest is not None and script:
        raise AgentError("bad_script", "script: must be empty when autopkgtest is given")
    if autopkgtest is not None and "archive_bytes" not in input:
        message = "input: autopkgtest needs the package as an archive input (archive_bytes)"
        raise AgentError("bad_input", message)


def check_walltime(value: object, minimum: int) -> int:
    """minimum: the host's (Config.job_min_walltime_s; 60 but on a test host)."""
    return check_integer("walltime_s", value, minimum, MAX_WALLTIME_S, "bad_walltime")


def check_grace(value: object) -> int:
    return check_integer("grace_s", value, 0, MAX_GRACE_S, "bad_walltime")


def check_input(value: object) -> dict:
    """{}, {"git"} (the remote's default branch), {"git", "ref"}, or {"archive_bytes": N}: N raw
    bytes of a .tar.gz follow the request line on stdin (checked by check_archive())."""
    if not isinstance(value, dict) or set(value) not in INPUT_SHAPES:
        message = 'input: must be {}, {"git"}, {"git", "ref"} or {"archive_bytes"}'
        raise AgentError("bad_input", message)
    if "archive_bytes" in value:
        size = value["archive_bytes"]
        return {
            "archive_bytes": check_integer(
                "input.archive_bytes", size, 1, MAX_ARCHIVE_BYTES, "bad_input"
            )
        }
    if "git" in value:
        cleaned = {"git": check_git_url(value["git"])}
        if "ref" in value:
            cleaned["ref"] = check_git_ref(value["ref"])
        return cleaned
    return {}


def check_git_url(value: object) -> str:
    # https only: no ssh:// (it would use the host's keys), no file://, no ext:: helpers, and
    # nothing git could read as an option (--upload-pack=...); no credentials either.
    if not isinstance(value, str) or len(value) > MAX_GIT_URL or not GIT_URL.fullmatch(value):
        raise AgentError("bad_input", "input.git: must be an https:// URL without credentials")
    return value


def check_git_ref(value: object) -> str:
    if (
        not isinstance(value, str)
        or not GIT_REF.fullmatch(value)
        or value.startswith(("-", ".", "/"))
        or value.endswith(("/", ".", ".lock"))
        or ".." in value
        or "//" in value
        or "/." in value
    ):
        raise AgentError("bad_input", f"input.ref: must be a branch or tag (^{GIT_REF.pattern}$)")
    return value


def check_archive(file: BinaryIO) -> None:
    """A .tar.gz whose members all stay inside input/; the checks tarfile's "data" filter and
    the supervisor repeat against the real file system when it is extracted. Read through
    from file (seekable), a block at a time: a GiB archive is never held in memory."""
    try:
        with tarfile.open(fileobj=file, mode="r:gz") as archive:
            content = 0
            for count, member in enumerate(archive, start=1):
                check_member(member)
                content += member.size
                if count > MAX_ARCHIVE_MEMBERS or content > MAX_ARCHIVE_CONTENT:
                    raise AgentError("bad_input", "input.archive: too many or too large members")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise AgentError("bad_input", f"input.archive: not a .tar.gz: {exc}") from exc


def check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    where = f"input.archive: member {name[:100]!r}"
    if name.startswith("/") or ".." in name.split("/"):
        raise AgentError("bad_input", f"{where} has an absolute path or a '..'")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise AgentError("bad_input", f"{where} is not a file, directory or link")
    if member.issym():
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
    else:
        target = posixpath.normpath(member.linkname) if member.islnk() else "."
    if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
        raise AgentError("bad_input", f"{where} links outside the archive")
