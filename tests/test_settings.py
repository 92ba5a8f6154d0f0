"""Settings come from the environment; production settings pass `check --deploy`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Each test starts manage.py in a process of its own, with its own environment and no
# DATABASE_URL: independent of the pass's database, so CI runs them in its first pass only.
pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parent.parent


def manage(*args, env_extra=None, tmp_path):
    env = {
        "PATH": os.environ["PATH"],
        "PORTAL_VAR_DIR": str(tmp_path),
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {
    "SECRET_KEY": "k" * 20 + "a-long-random-production-key-0123456789!@#$%^",
    "ALLOWED_HOSTS": "porterbox.example.org",
}


def test_it_passes_check_deploy_in_production_settings(tmp_path):
    result = manage(
        "check", "--deploy", "--fail-level", "DEBUG", env_extra=PRODUCTION, tmp_path=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_it_reads_the_secret_key_from_a_file(tmp_path):
    key_file = tmp_path / "secret"
    key_file.write_text(PRODUCTION["SECRET_KEY"] + "\n")
    env = {"SECRET_KEY_FILE": str(key_file), "ALLOWED_HOSTS": "porterbox.example.org"}
    result = manage("check", "--deploy", "--fail-level", "DEBUG", env_extra=env, tmp_path=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_it_refuses_to_start_without_a_secret_key_outside_debug(tmp_path):
    env = {"PATH": os.environ["PATH"], "PORTAL_VAR_DIR": str(tmp_path), "ALLOWED_HOSTS": "x"}
    result = subprocess.run(
        [sys.executable, "-c", "import portal.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "The SECRET_KEY setting must not be empty" in result.stderr
    deploy = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        env_extra={"ALLOWED_HOSTS": "x"},
        tmp_path=tmp_path,
    )
    assert deploy.returncode != 0
    assert "security.W009" in deploy.stderr + deploy.stdout


def test_it_refuses_a_malformed_boolean(tmp_path):
    result = manage("check", env_extra={"DJANGO_DEBUG": "maybe"}, tmp_path=tmp_path)
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be a boolean" in result.stderr


def test_it_runs_on_embedded_defaults_in_debug(tmp_path):
    result = manage("check", env_extra={"DJANGO_DEBUG": "1"}, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr


def test_production_keeps_database_connections_and_checks_them_before_use(tmp_path):
    show = "from django.conf import settings as s; d = s.DATABASES['default']; "
    show += "print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'])"
    result = manage("shell", "--no-imports", "-c", show, env_extra=PRODUCTION, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["60", "True"]
