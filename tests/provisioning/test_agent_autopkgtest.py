"""job-start's autopkgtest field (a package test run instead of a script) is refused outside
docs/agent.md before anything runs, and becomes exactly autopkgtest's argv.

In-process and without root, as test_agent_jobs_validation.py: commands are recorded, not run,
and a refusal is seen to run nothing and write nothing. The runs themselves are tested on the
test host with a real Debian stack (tests/packages/test_autopkgtest_host.py).
"""

import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.agent import hostctl, protocol, rules
from provisioning.agent.jobrun import autopkgtest_argv
from provisioning.client import AgentClient, DeviceRef, Inventory
from tests.provisioning.agent_requests import ask, assert_refused, spy_commands

CONFIG = {
    "stacks": {"bookworm": {"chroot": "porterbox-bookworm"}},
    "devices": {"nvidia": {"0": ["/dev/nvidia0"], "1": ["/dev/nvidia1"]}},
    "shared_nodes": {"nvidia": ["/dev/nvidiactl"]},
}
RUN = {"dsc": "llama.cpp_0.0.4719+dfsg-1~exp2.dsc", "tests": ["cuda-smoke", "command1"]}
START = {
    "verb": "job-start",
    "job": "j42",
    "account": "pj-debian-ci",
    "stack": "bookworm",
    "devices": [{"vendor": "nvidia", "index": 1}],
    "script": "",
    "env": {},
    "walltime_s": 3600,
    "grace_s": 60,
    "input": {"archive_bytes": 1000},
    "autopkgtest": RUN,
}
a_fuzz = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def config(tmp_path):
    return protocol.parse_config({**CONFIG, "state_dir": str(tmp_path / "state")})


@pytest.fixture
def commands(monkeypatch):
    return spy_commands(monkeypatch)


def test_it_accepts_a_test_run_with_an_empty_script_and_an_archive(config):
    verb, cleaned = hostctl.validate(START, config)

    assert verb == "job-start"
    assert cleaned["autopkgtest"] == RUN
    assert cleaned["script"] == ""


def test_a_script_job_has_no_autopkgtest(config):
    request = {**START, "script": "true\n", "input": {}}
    del request["autopkgtest"]

    assert hostctl.validate(request, config)[1]["autopkgtest"] is None


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"script": "true\n"}, "bad_script", "script: must be empty when autopkgtest"),
        ({"autopkgtest": None}, "bad_script", "script: empty, and no autopkgtest"),
        ({"input": {}}, "bad_input", "input: autopkgtest needs the package as an archive"),
        ({"input": {"git": "https://salsa.debian.org/x.git"}}, "bad_input", "input: autopkgtest"),
    ],
)
def test_it_wants_exactly_one_of_a_script_and_a_test_run(config, commands, change, code, field):
    answer = ask(config, {**START, **change})
    assert_refused(answer, code, field, config, commands)


@pytest.mark.parametrize(
    "dsc",
    [
        "foo_1:1.0-1.dsc",  # an epoch: dpkg names files without it
        "-foo_1.0.dsc",
        "Foo_1.0.dsc",  # upper case is not a source name
        "f_1.0.dsc",  # one character
        "foo_1.0.changes",
        "foo_1.0",
        "foo_a1.0.dsc",  # a version starts with a digit
        "foo_1.0.dsc/../x.dsc",
        "../foo_1.0.dsc",
        "foo_1.0 .dsc",
        "foo-1.0.dsc",
        "foo_1.0.dsc\n",
        "",
    ],
)
def test_it_refuses_a_dsc_that_is_not_a_source_package_file_name(config, commands, dsc):
    answer = ask(config, {**START, "autopkgtest": {"dsc": dsc, "tests": []}})
    assert_refused(answer, "bad_autopkgtest", "autopkgtest.dsc", config, commands)


@pytest.mark.parametrize(
    "tests",
    [
        ["--shell"],
        ["-x"],
        ["a b"],
        ["a/b"],
        [".."],
        [""],
        ["smoke", "smoke"],
        ["a" * 101],
        [f"t{i}" for i in range(51)],
        "smoke",
        [1],
        None,
    ],
)
def test_it_refuses_test_names_autopkgtest_could_take_for_an_option(config, commands, tests):
    answer = ask(config, {**START, "autopkgtest": {"dsc": "foo_1.0.dsc", "tests": tests}})
    assert_refused(answer, "bad_autopkgtest", "autopkgtest.tests", config, commands)


@pytest.mark.parametrize(
    "value",
    ["foo_1.0.dsc", ["foo_1.0.dsc"], {"dsc": "foo_1.0.dsc"}, {**RUN, "options": ["--shell"]}],
)
def test_it_refuses_an_autopkgtest_that_is_not_dsc_and_tests(config, commands, value):
    answer = ask(config, {**START, "autopkgtest": value})
    assert_refused(answer, "bad_autopkgtest", "autopkgtest:", config, commands)


@a_fuzz
@given(name=st.text(max_size=30))
def test_a_test_name_it_accepts_is_never_an_option_or_a_path(name):
    try:
        rules.check_autopkgtest({"dsc": "foo_1.0.dsc", "tests": [name]})
    except protocol.AgentError:
        return
    assert not name.startswith("-") and "/" not in name and name.strip() == name != ""


def test_the_supervisor_runs_autopkgtest_on_the_input_with_the_null_backend():
    argv = autopkgtest_argv(RUN, "/home/pj-debian-ci/jobs/j42", 3600)

    assert argv == [
        "autopkgtest", "--no-built-binaries",
        "--output-dir", "/home/pj-debian-ci/jobs/j42/output/autopkgtest",
        "--test-name", "cuda-smoke", "--test-name", "command1",
        "--timeout-test=3600",
        "/home/pj-debian-ci/jobs/j42/input/llama.cpp_0.0.4719+dfsg-1~exp2.dsc", "--", "null",
    ]  # fmt: skip
    # No names: every test of the package.
    assert "--test-name" not in autopkgtest_argv({**RUN, "tests": []}, "/w", 60)


def test_a_replacement_tests_control_is_the_inputs_file_of_the_one_name_allowed():
    """The portal's copy of debian/tests/control without X-Requires-Hwspec (autopkgtest skips
    a stanza over a field it does not know) is read from the input, never from elsewhere."""
    run = {**RUN, "control": rules.OVERRIDE_CONTROL}
    assert rules.check_autopkgtest(run) == run
    argv = autopkgtest_argv(run, "/w", 60)
    at = argv.index("--override-control")
    assert argv[at + 1] == "/w/input/porterbox-tests-control"
    for elsewhere in ("/etc/passwd", "../control", "--help", ""):
        with pytest.raises(protocol.AgentError, match=r"autopkgtest\.control"):
            rules.check_autopkgtest({**RUN, "control": elsewhere})


def test_the_client_sends_autopkgtest_only_for_a_test_run_and_reads_the_stacks_digest():
    sent = []

    def run(request, *, body=None, sink=None):
        sent.append(json.loads(request))
        answer = {"ok": True, "job": "j42", "started": True}
        return 0, json.dumps(answer).encode() + b"\n", b""

    client = AgentClient(run)
    devices = [DeviceRef("nvidia", 1)]

    def start(**fields):
        client.job_start(
            job="j42", account="pj-debian-ci", stack="bookworm", devices=devices, env={},
            walltime_s=3600, grace_s=60, **fields,
        )  # fmt: skip

    start(script="true\n", input={})
    start(script="", input={"archive_bytes": 10}, archive=io.BytesIO(b"x" * 10), autopkgtest=RUN)

    assert "autopkgtest" not in sent[0]
    assert (sent[1]["script"], sent[1]["autopkgtest"]) == ("", RUN)
    # The request the client sends is one the agent takes.
    assert hostctl.validate(sent[1], protocol.parse_config(CONFIG))[1]["autopkgtest"] == RUN

    stacks = [
        {"name": "bookworm", "chroot": "porterbox-bookworm", "present": True, "digest": "ab" * 32},
        {"name": "old", "chroot": "old", "present": True},  # an agent before digests
    ]
    inventory = Inventory.parse({"devices": [], "stacks": stacks})
    assert [s.digest for s in inventory.stacks] == ["ab" * 32, ""]
