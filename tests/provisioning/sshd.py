"""A throwaway OpenSSH sshd on a free 127.0.0.1 port, with its own host keys, for tests."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh-keygen") is not None


def keygen(path: Path, key_type: str = "ed25519") -> Path:
    """A new passphrase-less key pair at path and path.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Sshd:
    dir: Path
    port: int
    user: str
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"

    @property
    def host_key_pubs(self) -> list[Path]:
        return sorted(self.dir.glob("ssh_host_*_key.pub"))

    @property
    def known_keys(self) -> str:
        """The host keys as "keytype base64 comment" lines, as recorded at registration."""
        return "".join(p.read_text() for p in self.host_key_pubs)

    @property
    def log(self) -> str:
        return (self.dir / "sshd.log").read_text()

    def authorize(self, pub: Path, options: str = "") -> None:
        """Replace authorized_keys with pub's key, behind options such as restrict,command="..."."""
        line = pub.read_text().strip()
        (self.dir / "authorized_keys").write_text(f"{options} {line}\n" if options else line + "\n")

    def start(self) -> None:
        if os.geteuid() == 0:
            # sshd running as root wants its privilege-separation directory, which the
            # distribution's service unit creates; no service runs here.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    *(f"HostKey {p.with_suffix('')}" for p in self.host_key_pubs),
                    f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                    f"AllowUsers {self.user}",
                    "PidFile none",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        log = (self.dir / "sshd.log").open("ab")
        self.process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}:\n{self.log}")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port}:\n{self.log}")

    def connection_pids(self) -> list[int]:
        """The listener's children: with -D, one sshd process per open connection."""
        assert self.process is not None
        pid = self.process.pid
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def drop_connections(self) -> None:
        """Kill the per-connection sshd processes, as a server restart or a network cut would."""
        pids = self.connection_pids()
        assert pids, "no connection to drop"
        self._kill(pids)

    @staticmethod
    def _kill(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it may just have exited
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # Stopping the listener would leave its connections' processes running.
            self._kill(self.connection_pids())
            self.process.terminate()
            self.process.wait(timeout=10)


def start(directory: Path) -> Sshd:
    directory.mkdir(parents=True, exist_ok=True)
    keygen(directory / "ssh_host_ed25519_key", "ed25519")
    keygen(directory / "ssh_host_ecdsa_key", "ecdsa")
    (directory / "authorized_keys").write_text("")
    server = Sshd(dir=directory, port=free_port(), user=getpass.getuser())
    server.start()
    return server
