"""Where the client keeps its portals and tokens, and which portal a command talks to.

The file is $XDG_CONFIG_HOME/porterbox/config.json (~/.config by default):
`{"portals": {name: {"url", "token"}}, "default": name}`, written 0600 in a 0700 directory
because it holds API tokens. PORTERBOX_URL and PORTERBOX_TOKEN override it, so a script or a
CI job needs no file at all.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from porterbox_cli.errors import NOT_LOGGED_IN, REFUSED, CliError


@dataclass(frozen=True)
class Portal:
    name: str
    url: str
    token: str


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "porterbox"


def config_file() -> Path:
    return config_dir() / "config.json"


def load() -> dict:
    try:
        data = json.loads(config_file().read_text())
    except FileNotFoundError:
        return {"portals": {}, "default": None}
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {config_file()}: {exc}", "bad_config", NOT_LOGGED_IN) from None
    if not isinstance(data, dict) or not isinstance(data.get("portals"), dict):
        raise CliError(
            f"{config_file()} is not a porterbox configuration", "bad_config", NOT_LOGGED_IN
        )
    return data


def save(data: dict) -> None:
    """Write atomically, never readable by others, not even for a moment."""
    directory = config_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".config-", suffix=".json")  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, config_file())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def normalize_url(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"{url!r} is not an http(s) URL", "bad_url", REFUSED)
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def default_name(url: str) -> str:
    return urlsplit(url).netloc


def remember(name: str, url: str, token: str, *, make_default: bool) -> None:
    data = load()
    data["portals"][name] = {"url": url, "token": token}
    if make_default or not data.get("default") or data["default"] not in data["portals"]:
        data["default"] = name
    save(data)


def select(name: str | None) -> Portal:
    """The portal a command talks to: --portal NAME, else the environment, else the default."""
    env_url = os.environ.get("PORTERBOX_URL", "").strip()
    env_token = os.environ.get("PORTERBOX_TOKEN", "").strip()
    data = load()
    portals = data["portals"]
    if name is not None:
        if name not in portals:
            known = ", ".join(sorted(portals)) or "none"
            raise CliError(
                f"no portal named {name!r} (known: {known}); run: porterbox login --portal "
                f"{name} URL",
                "not_logged_in",
                NOT_LOGGED_IN,
            )
        entry = portals[name]
        return Portal(name, entry["url"], env_token or entry["token"])
    if env_url:
        url = normalize_url(env_url)
        same = [n for n, e in portals.items() if e.get("url") == url]
        token = env_token or (portals[same[0]]["token"] if same else "")
        return Portal(same[0] if same else default_name(url), url, token)
    default = data.get("default")
    if isinstance(default, str) and default in portals:
        entry = portals[default]
        return Portal(default, entry["url"], env_token or entry["token"])
    raise CliError(
        "not logged in to any portal; run: porterbox login URL (or set PORTERBOX_URL and "
        "PORTERBOX_TOKEN)",
        "not_logged_in",
        NOT_LOGGED_IN,
    )
