"""The job verbs refuse every request outside docs/agent.md before they touch the host.

In-process and without root, as tests/provisioning/test_agent_validation.py: the agent's one
command runner and the supervisor's launcher are spies, and the state directory is under
tmp_path, so a refusal is seen to run nothing and to write nothing. The jobs themselves are
tested on the test host (test_agent_jobs_on_host.py).
"""

import base64
import io
import json
import os
import stat
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.agent import hostctl, jobrun, jobs, protocol, rules
from tests.provisioning.agent_requests import ask, assert_refused, spy_commands

CONFIG = {
    "stacks": {"bookworm": {"chroot": "porterbox-bookworm"}},
    "devices": {"nvidia": {"0": ["/dev/nvidia0"], "1": ["/dev/nvidia1"]}},
    "shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
}
START = {
    "verb": "job-start",
    "job": "j42",
    "account": "pj-debian-ai",
    "stack": "bookworm",
    "devices": [{"vendor": "nvidia", "index": 1}],
    "script": "python3 train.py --epochs 3\n",
    "env": {"EPOCHS": "3", "HF_HOME": "/home/pj-debian-ai/.cache"},
    "walltime_s": 3600,
    "grace_s": 60,
    "input": {"git": "https://salsa.debian.org/deeplearning-team/demo.git", "ref": "main"},
}

HOSTILE_CHARS = [*";|&$()`'\" \t\n\r\0\\*?~<>{}[]#!=,./:%@+-", "é", "\u2028", "\x85", "\x7f"]
hostile_text = st.text(alphabet=st.sampled_from([*HOSTILE_CHARS, *"aez09_AZ"]), max_size=40)
not_a_string = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
not_an_integer = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.none(),
    st.just([60]),
)
a_fuzz = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def config(tmp_path):
    return protocol.parse_config({**CONFIG, "state_dir": str(tmp_path / "state")})


@pytest.fixture
def commands(monkeypatch):
    return spy_commands(monkeypatch)


def make_archive(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for member in members:
            archive.addfile(member, io.BytesIO(b"x" * member.size) if member.isreg() else None)
    return buffer.getvalue()


def ask_with_archive(config, archive: bytes, announced: int | None = None) -> dict:
    """job-start as the portal sends it: the request line, then the archive's raw bytes."""
    size = len(archive) if announced is None else announced
    line = json.dumps({**START, "input": {"archive_bytes": size}}).encode() + b"\n"
    return hostctl.handle(line, config, body=io.BytesIO(archive))


def assert_archive_refused(answer, field, config, commands):
    """Refused with nothing run and nothing kept: the spooled bytes are removed."""
    assert answer["ok"] is False
    assert answer["error"]["code"] == "bad_input", answer
    assert answer["error"]["message"].startswith(field), answer
    assert commands == []
    spool = os.path.join(config.state_dir, "spool")
    assert os.listdir(spool) == [] if os.path.exists(spool) else True
    assert not os.path.exists(os.path.join(config.state_dir, "jobs"))


def member(name, kind=tarfile.REGTYPE, linkname="", size=1, mode=0o644):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    info.size = size if kind == tarfile.REGTYPE else 0
    return info


# -- names -------------------------------------------------------------------------------------


@a_fuzz
@given(
    job=st.one_of(
        hostile_text.filter(lambda s: not rules.JOB.fullmatch(s)),
        st.sampled_from(["r42", "j0", "J42", "j42/../r1", "j-1", "j" + "9" * 19, "j42\n"]),
        not_a_string,
    )
)
def test_it_refuses_hostile_job_names_in_every_verb(config, commands, job):
    for request in (
        {**START, "job": job},
        {"verb": "job-status", "job": job},
        {"verb": "job-stop", "job": job, "grace_s": 0},
        {"verb": "job-logs", "job": job, "offset": 0, "limit": 10},
        {"verb": "job-clean", "job": job},
    ):
        assert_refused(ask(config, request), "bad_job", "job", config, commands)


@a_fuzz
@given(
    account=st.one_of(
        hostile_text.filter(lambda s: not protocol.USER.fullmatch(s)),
        st.sampled_from(["root", "porterbox", "porterbox-users", "daemon", "pj-x\n"]),
        not_a_string,
    )
)
def test_it_refuses_hostile_account_names(config, commands, account):
    answer = ask(config, {**START, "account": account})
    assert_refused(answer, "bad_account", "account", config, commands)


def test_it_refuses_stacks_and_devices_the_host_does_not_have(config, commands):
    answer = ask(config, {**START, "stack": "../../srv"})
    assert_refused(answer, "unknown_stack", "stack", config, commands)
    answer = ask(config, {**START, "devices": [{"vendor": "nvidia", "index": 3}]})
    assert_refused(answer, "unknown_device", "devices[0]", config, commands)


# -- the environment ---------------------------------------------------------------------------

denied_names = st.one_of(
    st.sampled_from(sorted(rules.DENIED_ENV | rules.SETUID_DROPPED_ENV)),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(rules.DENIED_ENV_PREFIXES),
        st.from_regex(r"[A-Z0-9_]{0,20}", fullmatch=True),
    ),
    st.sampled_from(["LD_PRELOAD", "PYTHONSTARTUP", "PERL5OPT", "RUBYOPT", "PORTERBOX_OUTPUT"]),
)


@a_fuzz
@given(
    name=st.one_of(
        denied_names,
        hostile_text.filter(lambda s: not rules.ENV_NAME.fullmatch(s)),
        st.just("A" * 65),
        st.sampled_from(["path", "1ABC", "BASH_FUNC_f%%", "A-B", "A=B", ""]),
    )
)
def test_it_refuses_hostile_or_reserved_env_names(config, commands, name):
    answer = ask(config, {**START, "env": {"EPOCHS": "3", name: "x"}})
    assert_refused(answer, "bad_env", "env", config, commands)


@a_fuzz
@given(
    value=st.one_of(
        st.builds(lambda a, b: f"{a}\0{b}", st.text(max_size=10), st.text(max_size=10)),
        st.just("x" * 4097),
        st.just("é" * 2049),  # 4098 bytes
        not_a_string.filter(lambda v: not isinstance(v, str)),
    )
)
def test_it_refuses_env_values_with_nul_too_long_or_not_strings(config, commands, value):
    answer = ask(config, {**START, "env": {"DATA": value}})
    assert_refused(answer, "bad_env", "env.DATA", config, commands)


def test_it_refuses_an_env_value_that_is_not_unicode(config, commands):
    raw = json.dumps({**START, "env": {"DATA": "@"}}).replace("@", "\\ud800").encode()
    assert_refused(ask(config, raw), "bad_env", "env.DATA", config, commands)


@pytest.mark.parametrize("env", [["A=1"], "A=1", {f"V{n}": "" for n in range(65)}])
def test_it_refuses_env_that_is_not_a_small_object(config, commands, env):
    assert_refused(ask(config, {**START, "env": env}), "bad_env", "env", config, commands)


@pytest.mark.parametrize(
    "array, field",
    [
        ([1, 0], "array"),
        ({"job": 1}, "array"),
        ({"job": 1, "task": 0, "more": 1}, "array"),
        ({"job": 0, "task": 0}, "array.job"),
        ({"job": "1", "task": 0}, "array.job"),
        ({"job": 1, "task": -1}, "array.task"),
        ({"job": 1, "task": True}, "array.task"),
    ],
)
def test_it_refuses_an_array_that_is_not_a_job_and_a_task_index(config, commands, array, field):
    answer = ask(config, {**START, "array": array})
    assert_refused(answer, "bad_request", field, config, commands)


def test_a_task_of_an_array_sees_the_array_and_its_index_and_a_plain_job_neither():
    from provisioning.agent.jobrun import array_env

    assert array_env({"job": 41, "task": 3}) == {
        "PORTERBOX_ARRAY_JOB_ID": "41",
        "PORTERBOX_ARRAY_TASK_ID": "3",
    }
    assert array_env(None) == {}


# -- the script, the walltime ------------------------------------------------------------------


@a_fuzz
@given(
    script=st.one_of(
        st.builds(lambda a, b: f"{a}\0{b}", st.text(max_size=50), st.text(max_size=50)),
        st.just("#" * (64 * 1024 + 1)),
        not_a_string.filter(lambda v: not isinstance(v, str)),
    )
)
def test_it_refuses_scripts_with_nul_too_long_or_not_text(config, commands, script):
    answer = ask(config, {**START, "script": script})
    assert_refused(answer, "bad_script", "script", config, commands)


def test_it_refuses_a_script_that_is_not_unicode(config, commands):
    raw = json.dumps({**START, "script": "echo @"}).replace("@", "\\udfff").encode()
    assert_refused(ask(config, raw), "bad_script", "script", config, commands)


@a_fuzz
@given(
    walltime=st.one_of(
        st.integers(max_value=59), st.integers(min_value=2592001, max_value=10**30), not_an_integer
    )
)
def test_it_refuses_walltimes_out_of_range(config, commands, walltime):
    answer = ask(config, {**START, "walltime_s": walltime})
    assert_refused(answer, "bad_walltime", "walltime_s", config, commands)


@a_fuzz
@given(grace=st.one_of(st.integers(max_value=-1), st.integers(min_value=601), not_an_integer))
def test_it_refuses_graces_out_of_range(config, commands, grace):
    answer = ask(config, {**START, "grace_s": grace})
    assert_refused(answer, "bad_walltime", "grace_s", config, commands)
    answer = ask(config, {"verb": "job-stop", "job": "j1", "grace_s": grace})
    assert_refused(answer, "bad_walltime", "grace_s", config, commands)


def test_a_host_configured_for_tests_accepts_a_shorter_walltime(tmp_path, commands):
    config = protocol.parse_config({**CONFIG, "state_dir": str(tmp_path), "job_min_walltime_s": 2})
    assert rules.check_walltime(2, config.job_min_walltime_s) == 2
    answer = ask(config, {**START, "walltime_s": 1})
    assert answer["error"]["code"] == "bad_walltime"
    assert "from 2 to 2592000" in answer["error"]["message"]


@pytest.mark.parametrize("value", [0, 61, "2", 2.0, True])
def test_it_refuses_a_configured_minimum_walltime_out_of_range(value):
    with pytest.raises(protocol.AgentError) as refused:
        protocol.parse_config({**CONFIG, "job_min_walltime_s": value})
    assert refused.value.code == "bad_config"
    assert refused.value.message.startswith("config.job_min_walltime_s")


# -- the input ---------------------------------------------------------------------------------

hostile_urls = st.one_of(
    st.sampled_from(
        [
            "--upload-pack=touch /tmp/pwned",
            "-u touch /tmp/pwned",
            "http://salsa.debian.org/x.git",
            "ssh://git@salsa.debian.org/x.git",
            "git@salsa.debian.org:x.git",
            "git://salsa.debian.org/x.git",
            "file:///etc",
            "/etc",
            "ext::sh -c touch% /tmp/pwned",
            "HTTPS://salsa.debian.org/x.git",
            "https://",
            "https://-oProxyCommand=x/",
            "https://user:token@salsa.debian.org/x.git",
            "https://salsa.debian.org/x.git --upload-pack=touch",
            "https://salsa.debian.org/x.git\n--upload-pack=touch",
            "https://salsa.debian.org/x.git\0",
            "https://sälsa.debian.org/x.git",
            "https://salsa.debian.org/ä.git",
            "https://salsa.debian.org/" + "x" * 1000,
        ]
    ),
    st.builds(lambda evil: f"https://salsa.debian.org/{evil}", hostile_text).filter(
        lambda url: not rules.GIT_URL.fullmatch(url)
    ),
    not_a_string,
)


@a_fuzz
@given(url=hostile_urls)
def test_it_refuses_git_urls_that_are_not_plain_https(config, commands, url):
    answer = ask(config, {**START, "input": {"git": url, "ref": "main"}})
    assert_refused(answer, "bad_input", "input.git", config, commands)


@a_fuzz
@given(
    ref=st.one_of(
        st.from_regex(r"-[A-Za-z0-9._/=-]{0,20}", fullmatch=True),
        st.sampled_from(
            ["", "--upload-pack=x", "-b", "main..evil", "main/", "/main", ".hidden", "a//b"]
        ),
        st.sampled_from(["main.lock", "a/.b", "main ", "ma in", "main\n", "x" * 101, "HEAD@{1}"]),
        hostile_text.filter(lambda s: not rules.GIT_REF.fullmatch(s)),
        not_a_string,
    )
)
def test_it_refuses_git_refs_that_could_be_options_or_are_not_refs(config, commands, ref):
    answer = ask(config, {**START, "input": {"git": START["input"]["git"], "ref": ref}})
    assert_refused(answer, "bad_input", "input.ref", config, commands)


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "https://salsa.debian.org/x.git",
        {"ref": "main"},
        {"git": "https://salsa.debian.org/x.git", "ref": "main", "archive": ""},
        {"git": "https://salsa.debian.org/x.git", "archive_bytes": 10},
        {"archive": base64.b64encode(make_archive(member("a"))).decode()},  # the old form
        {"url": "https://salsa.debian.org/x.git", "ref": "main"},
    ],
)
def test_it_refuses_input_of_another_shape(config, commands, value):
    assert_refused(ask(config, {**START, "input": value}), "bad_input", "input", config, commands)


def test_it_takes_a_git_input_without_a_ref_as_the_default_branch(config):
    url = "https://salsa.debian.org/x.git"
    cleaned = jobs.validate_start({**START, "input": {"git": url}}, config)
    assert cleaned["input"] == {"git": url}


@pytest.mark.parametrize("size", [0, -1, "10", 1.5, True, None, rules.MAX_ARCHIVE_BYTES + 1])
def test_it_refuses_an_archive_size_out_of_range(config, commands, size):
    answer = ask(config, {**START, "input": {"archive_bytes": size}})
    assert_refused(answer, "bad_input", "input.archive_bytes", config, commands)


def test_it_refuses_an_archive_shorter_than_announced_or_missing(config, commands):
    archive = make_archive(member("a.txt"))
    answer = ask_with_archive(config, archive, announced=len(archive) + 1)
    assert_archive_refused(answer, "input.archive_bytes", config, commands)
    assert "ended after" in answer["error"]["message"]
    line = json.dumps({**START, "input": {"archive_bytes": len(archive)}}).encode()
    answer = hostctl.handle(line, config)  # nothing follows the request
    assert_archive_refused(answer, "input.archive_bytes", config, commands)


@pytest.mark.parametrize(
    "archive",
    [
        b"not gzip",
        b"\x1f\x8b" + b"\0" * 20,
        make_archive(member("/etc/cron.d/evil")),
        make_archive(member("../evil")),
        make_archive(member("data"), member("data/../../evil")),
        make_archive(member("link", tarfile.SYMTYPE, "/etc/shadow")),
        make_archive(member("link", tarfile.SYMTYPE, "../../etc")),
        make_archive(member("a/link", tarfile.SYMTYPE, "../..")),
        make_archive(member("hard", tarfile.LNKTYPE, "../outside")),
        make_archive(member("hard", tarfile.LNKTYPE, "/etc/shadow")),
        make_archive(member("disk", tarfile.BLKTYPE)),
        make_archive(member("fifo", tarfile.FIFOTYPE)),
    ],
)
def test_it_refuses_archives_that_are_broken_or_reach_outside_input(config, commands, archive):
    answer = ask_with_archive(config, archive)
    assert_archive_refused(answer, "input.archive", config, commands)


def test_it_accepts_an_archive_whose_links_stay_inside(config):
    archive = make_archive(
        member("data", tarfile.DIRTYPE),
        member("data/a.txt"),
        member("data/b.txt", tarfile.SYMTYPE, "a.txt"),
        member("c.txt", tarfile.SYMTYPE, "data/../data/a.txt"),
        member("d.txt", tarfile.LNKTYPE, "data/a.txt"),
    )
    request = {**START, "input": {"archive_bytes": len(archive)}}
    assert jobs.validate_start(request, config)["input"] == {"archive_bytes": len(archive)}
    rules.check_archive(io.BytesIO(archive))  # what receive_archive() runs on the spooled file


# -- the other verbs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        ({"verb": "job-status"}, "bad_request", "job"),
        ({"verb": "job-status", "job": "j1", "user": "alice"}, "bad_request", "user"),
        ({"verb": "job-stop", "job": "j1"}, "bad_request", "grace_s"),
        ({"verb": "job-logs", "job": "j1", "offset": 0}, "bad_request", "limit"),
        ({"verb": "job-logs", "job": "j1", "offset": -1, "limit": 1}, "bad_request", "offset"),
        ({"verb": "job-logs", "job": "j1", "offset": 0, "limit": 0}, "bad_request", "limit"),
        ({"verb": "job-logs", "job": "j1", "offset": 0, "limit": 2**21}, "bad_request", "limit"),
        ({"verb": "job-logs", "job": "j1", "offset": "0", "limit": 1}, "bad_request", "offset"),
        ({k: v for k, v in START.items() if k != "input"}, "bad_request", "input"),
        ({**START, "user": "root"}, "bad_request", "user"),
        ({**START, "command": ["/bin/sh"]}, "bad_request", "command"),
    ],
)
def test_it_refuses_malformed_job_requests(config, commands, request_, code, field):
    assert_refused(ask(config, request_), code, field, config, commands)


def test_a_job_this_host_never_had_is_unknown_and_nothing_is_done(config, commands):
    assert ask(config, {"verb": "job-status", "job": "j7"}) == {
        "ok": True,
        "job": "j7",
        "state": "unknown",
        "exit_status": None,
        "started_at": None,
        "ended_at": None,
        "reason": None,
        "log_bytes": 0,
    }
    stopped = ask(config, {"verb": "job-stop", "job": "j7", "grace_s": 0})
    assert stopped["ok"] and stopped["state"] == "unknown"
    logs = ask(config, {"verb": "job-logs", "job": "j7", "offset": 0, "limit": 100})
    assert logs == {"ok": True, "data": "", "offset": 0, "eof": True}
    assert ask(config, {"verb": "job-clean", "job": "j7"}) == {
        "ok": True,
        "job": "j7",
        "removed": False,
    }
    assert commands == []


def test_job_logs_come_in_pieces_that_never_split_a_character(config):
    directory = jobs.job_dir(config.state_dir, "j3")
    os.makedirs(directory)
    text = "naïve → 😀 done\n" * 3
    with open(os.path.join(directory, "log"), "w", encoding="utf-8") as log:
        log.write(text)
    for name, content in (("record.json", {"started_at": "x"}), ("status.json", {"state": "x"})):
        with open(os.path.join(directory, name), "w") as file:
            json.dump(content, file)

    def read(limit):
        pieces, offset, eof = [], 0, False
        while not eof:
            request = {"verb": "job-logs", "job": "j3", "offset": offset, "limit": limit}
            answer = ask(config, request)
            assert 0 < answer["offset"] - offset <= limit or answer["eof"]
            pieces.append(answer["data"])
            offset, eof = answer["offset"], answer["eof"]
        return pieces

    pieces = read(5)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert len(read(1)) > len(text)  # too short for a character: bytes, but it moves on


# -- extraction --------------------------------------------------------------------------------


@pytest.fixture(params=["data filter", "without it"])
def extraction(request, monkeypatch):
    """Both ways the supervisor extracts: tarfile's data filter, or its own checks (Debian
    12's Python 3.11.2 has no filter)."""
    if request.param == "without it":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    return request.param


def test_extraction_refuses_a_link_that_leaves_through_another_link(tmp_path, extraction):
    # Each link looks inside on its own; together, "d/e" is "./..": the pure check cannot know.
    archive = make_archive(
        member("d", tarfile.SYMTYPE, "."),
        member("d/e", tarfile.SYMTYPE, ".."),
        member("d/e/evil"),
    )
    destination = tmp_path / "input"
    destination.mkdir()

    with pytest.raises(tarfile.TarError):
        jobrun.extract_archive(io.BytesIO(archive), str(destination))

    assert not (tmp_path / "evil").exists()


def test_extraction_drops_setuid_bits_and_keeps_links_inside(tmp_path, extraction):
    archive = make_archive(
        member("data", tarfile.DIRTYPE, mode=0o777),
        member("data/tool", mode=0o4777),
        member("data/link", tarfile.SYMTYPE, "tool"),
    )
    destination = tmp_path / "input"
    destination.mkdir()

    jobrun.extract_archive(io.BytesIO(archive), str(destination))

    assert stat.S_IMODE((destination / "data" / "tool").stat().st_mode) == 0o755
    assert (destination / "data" / "link").read_bytes() == b"x"
