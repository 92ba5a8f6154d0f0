"""Asking the agent in-process, with every command it would run recorded instead of run.

For the validation tests: a refused request must run nothing and write nothing.
"""

import json
import os

from provisioning.agent import hostctl, jobs, system


def spy_commands(monkeypatch) -> list:
    """Every command the agent would have run, and every job supervisor it would have started."""
    calls = []
    monkeypatch.setattr(system, "run", lambda argv, **kwargs: calls.append(argv))
    monkeypatch.setattr(jobs, "spawn_supervisor", lambda *args: calls.append(["jobrun", *args]))
    return calls


def ask(config, request) -> dict:
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    return hostctl.handle(raw, config)


def assert_refused(answer, code, field, config, commands):
    assert answer["ok"] is False
    assert answer["error"]["code"] == code, answer
    assert answer["error"]["message"].startswith(field), answer
    assert commands == []
    assert not os.path.exists(config.state_dir)
