"""Remote mode: the loader reaches MongoDB and PostgreSQL through SSH tunnels of a real OpenSSH
server on loopback (Debian's openssh-server, started here on a free port with its own host key
and an authorized client key)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from pymongo import MongoClient

from conftest import ROOT, SOURCE_DATABASE, comparable_rows, connect, create_database, run_loader
from loader.config import load_config
from loader import tunnel
from loader.demo.servers import free_port
from loader.settings import load_settings

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
UNREACHABLE = {"MONGODB_URL": "mongodb://127.0.0.1:9", "POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "9"}


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class OpenSSHServer:
    """sshd in the foreground on 127.0.0.1:<free port>, key authentication only."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.host_key = _keygen(root / "host_key")
        self.client_key = root / "client_key"
        (root / "authorized_keys").write_text(_keygen(self.client_key) + "\n")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\nStrictModes no\nAllowTcpForwarding yes\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> "OpenSSHServer":
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stdout=subprocess.DEVNULL, stderr=(self.root / "sshd.log").open("w"))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()}")

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)

    def known_hosts(self, key: str | None = None) -> Path:
        """A known_hosts file listing this server with `key` (default: its real host key)."""
        path = self.root / f"known_hosts-{len(list(self.root.glob('known_hosts-*')))}"
        path.write_text(f"[127.0.0.1]:{self.port} {key or self.host_key}\n")
        return path

    def remote_env(self, known_hosts: Path, mongo_url: str, postgres: dict[str, str]) -> dict[str, str]:
        """The loader's settings for remote -> remote through this server; the local settings
        point at closed ports, so only the tunnels can reach the servers."""
        return {
            **UNREACHABLE,
            "TRANSFER_SOURCE": "Remote",
            "TRANSFER_DESTINATION": "remote",
            "REMOTE_SERVER_URL": "127.0.0.1",
            "REMOTE_SERVER_PORT": str(self.port),
            "REMOTE_SERVER_USER": getpass.getuser(),
            "REMOTE_SERVER_KEY": str(self.client_key),
            "SSH_KNOWN_HOSTS": str(known_hosts),
            "REMOTE_MONGODB_URL": mongo_url,
            "REMOTE_MONGODB_DATABASE": SOURCE_DATABASE,
            "REMOTE_POSTGRES_PORT": postgres["POSTGRES_PORT"],
            "REMOTE_POSTGRES_DATABASE": postgres["POSTGRES_DATABASE"],
            "REMOTE_POSTGRES_USER": postgres["POSTGRES_USER"],
        }


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = OpenSSHServer(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def _tables(settings: dict[str, str]) -> dict[str, list[tuple]]:
    with connect(settings) as conn:
        return {t.name: sorted(map(repr, comparable_rows(conn, t.name))) for t in load_config(ROOT / "config/schemas.yaml").ordered()}


def test_run_through_tunnels_gives_the_tables_of_a_local_run(sshd, source, target, postgres, tmp_path):
    env = sshd.remote_env(sshd.known_hosts(), source["MONGODB_URL"], target)
    done = run_loader("run", "--no-progress", env={**env, "LOADER_STAGING_DIR": str(tmp_path / "remote")})
    assert done.returncode == 0, done.stderr
    local = create_database(postgres)
    done = run_loader("run", "--no-progress", env={**source, **local, "LOADER_STAGING_DIR": str(tmp_path / "local")})
    assert done.returncode == 0, done.stderr
    tunnelled, direct = _tables(target), _tables(local)
    assert tunnelled["users"] and tunnelled["users_logbook"]
    assert tunnelled == direct


@pytest.mark.parametrize("listed", ["nothing", "another key"])
def test_unverified_host_key_is_refused(sshd, source, target, tmp_path, listed):
    other_key = _keygen(tmp_path / "other") if listed == "another key" else None
    known_hosts = sshd.known_hosts(other_key) if other_key else tmp_path / "empty_known_hosts"
    env = sshd.remote_env(known_hosts, source["MONGODB_URL"], target)
    done = run_loader("extract", "--no-progress", env={**env, "LOADER_STAGING_DIR": str(tmp_path / "staging")})
    assert done.returncode == 1
    expected = "differs from the one in known_hosts" if other_key else "is not in"
    assert f"SSH host key of 127.0.0.1:{sshd.port} {expected}" in done.stderr
    assert not (tmp_path / "staging" / "manifest.json").exists()


def test_failed_login_names_the_user_and_hides_the_password(sshd, source, target, tmp_path):
    env = sshd.remote_env(sshd.known_hosts(), source["MONGODB_URL"], target)
    env = {k: v for k, v in env.items() if k != "REMOTE_SERVER_KEY"} | {"REMOTE_SERVER_PASSWORD": "s3cret-pw"}
    done = run_loader("load", "--no-progress", env={**env, "LOADER_STAGING_DIR": str(tmp_path / "staging")})
    assert done.returncode == 1
    assert f"SSH authentication failed for {getpass.getuser()}@127.0.0.1:{sshd.port}" in done.stderr
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_tunnels_close_on_every_exit_path(sshd, source, target):
    settings = load_settings(env_file=Path(os.devnull), **{
        "transfer_source": "remote", "transfer_destination": "remote", "remote_server_url": "127.0.0.1",
        "remote_server_port": sshd.port, "remote_server_user": getpass.getuser(), "remote_server_key": sshd.client_key,
        "ssh_known_hosts": sshd.known_hosts(), "remote_mongodb_url": source["MONGODB_URL"],
        "remote_postgres_port": int(target["POSTGRES_PORT"]), "remote_postgres_user": target["POSTGRES_USER"],
    })
    with pytest.raises(RuntimeError, match="stage failed"):
        with tunnel.opened(settings) as local:
            ports = [local.postgres_port, int(local.mongodb_url.get_secret_value().rsplit(":", 1)[1].split("/")[0])]
            with psycopg.connect(**local.postgres_conninfo() | {"dbname": "postgres"}) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            with MongoClient(local.mongodb_url.get_secret_value(), serverSelectionTimeoutMS=5000) as client:
                assert client.admin.command("ping")["ok"] == 1
            raise RuntimeError("stage failed")
    for port in ports:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"tunnel port {port} still open"
