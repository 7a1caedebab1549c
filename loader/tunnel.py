"""SSH tunnels to a remote server's MongoDB and PostgreSQL (TRANSFER_SOURCE / TRANSFER_DESTINATION
= remote, MAPPING.md 6.2).

One SSH connection to REMOTE_SERVER_URL carries both tunnels. Each tunnel listens on an ephemeral
port of 127.0.0.1 and forwards every connection to a host:port as seen from the remote server;
the stages then run with settings pointing at those local ends. The server's host key must already
be in known_hosts (never accepted automatically), and the tunnels close on every exit path.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import paramiko
from pydantic import SecretStr

from loader.settings import Settings

_CHUNK = 64 * 1024


class TunnelError(Exception):
    """The SSH server cannot be reached, is not the one known_hosts names, or refuses the login."""


@contextmanager
def opened(settings: Settings, mongodb: bool = True, postgres: bool = True) -> Iterator[Settings]:
    """`settings` with the remote sides of the servers this stage uses (`mongodb`, `postgres`)
    replaced by local ends of SSH tunnels; unchanged when both are local. The returned settings
    are local, so a nested call opens nothing."""
    remote_mongodb = mongodb and settings.transfer_source.lower() == "remote"
    remote_postgres = postgres and settings.transfer_destination.lower() == "remote"
    if not (remote_mongodb or remote_postgres):
        yield settings
        return
    with ExitStack() as stack:
        client = stack.enter_context(_ssh_client(settings))
        changes: dict[str, object] = {"transfer_source": "local", "transfer_destination": "local"}
        if remote_mongodb:
            changes |= _through_mongodb_tunnel(settings, stack, client.get_transport())
        if remote_postgres:
            port = stack.enter_context(_forward(client.get_transport(), "localhost", settings.remote_postgres_port))
            changes |= {
                "postgres_host": "127.0.0.1",
                "postgres_port": port,
                "postgres_database": settings.remote_postgres_database,
                "postgres_user": settings.remote_postgres_user,
                "postgres_password": settings.remote_postgres_password,
            }
        yield settings.model_copy(update=changes)


def _through_mongodb_tunnel(settings: Settings, stack: ExitStack, transport: paramiko.Transport) -> dict[str, object]:
    """The MongoDB settings of a tunnel to REMOTE_MONGODB_URL's host and port (honoured, MAPPING.md 6.5)."""
    url = settings.remote_mongodb_url.get_secret_value()
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if parts.scheme != "mongodb" or not hosts or "," in hosts:
        raise TunnelError("REMOTE_MONGODB_URL must be a mongodb:// URL naming one host (seen from the remote server) to tunnel to")
    host, port = _host_and_port(hosts, default_port=27017)
    local_port = stack.enter_context(_forward(transport, host, port))
    userinfo = parts.netloc[: -len(hosts)]
    # The tunnel reaches one member: connect to it directly instead of discovering the replica set,
    # whose members' addresses are not reachable from here.
    query = "&".join(filter(None, [parts.query, "directConnection=true"]))
    tunnelled = urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{local_port}", parts.path or "/", query, parts.fragment))
    return {"mongodb_url": SecretStr(tunnelled), "mongodb_database": settings.remote_mongodb_database}


def _host_and_port(address: str, default_port: int) -> tuple[str, int]:
    """'host', 'host:port', '[ipv6]' or '[ipv6]:port'."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or host.count(":") > 0 and not host.endswith("]"):
        host, port = address, str(default_port)
    return host.strip("[]"), int(port)


@contextmanager
def _ssh_client(settings: Settings) -> Iterator[paramiko.SSHClient]:
    if not settings.remote_server_url or not settings.remote_server_user:
        raise TunnelError("TRANSFER_SOURCE/TRANSFER_DESTINATION=remote needs REMOTE_SERVER_URL and REMOTE_SERVER_USER")
    host, port, user = settings.remote_server_url, settings.remote_server_port, settings.remote_server_user
    client = paramiko.SSHClient()
    client.load_system_host_keys()
    known_hosts = settings.ssh_known_hosts.expanduser()
    if known_hosts.exists():
        client.load_host_keys(str(known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    password = settings.remote_server_password.get_secret_value() if settings.remote_server_password else None
    key = str(settings.remote_server_key.expanduser()) if settings.remote_server_key else None
    try:
        try:
            client.connect(host, port, username=user, password=password, key_filename=key,
                           timeout=settings.connect_timeout, banner_timeout=settings.connect_timeout,
                           auth_timeout=settings.connect_timeout, look_for_keys=key is None and password is None)
        except (paramiko.SSHException, OSError) as exc:
            raise _connection_error(exc, host, port, user, known_hosts) from None
        yield client
    finally:
        client.close()


def _connection_error(exc: Exception, host: str, port: int, user: str, known_hosts: Path) -> TunnelError:
    """One line saying why the SSH connection failed (never the password)."""
    server = f"{host}:{port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        return TunnelError(f"the SSH host key of {server} differs from the one in known_hosts: refusing to connect")
    if isinstance(exc, paramiko.AuthenticationException):
        return TunnelError(f"SSH authentication failed for {user}@{server}")
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return TunnelError(f"the SSH host key of {server} is not in {known_hosts} or the system's known hosts: "
                           f"verify it and add it (for example ssh-keyscan -p {port} {host}); it is never accepted automatically")
    if isinstance(exc, paramiko.SSHException):
        return TunnelError(f"SSH connection to {server} failed: {exc}")
    return TunnelError(f"cannot reach the SSH server {server}: {getattr(exc, 'strerror', None) or type(exc).__name__}")


@contextmanager
def _forward(transport: paramiko.Transport, host: str, port: int) -> Iterator[int]:
    """Listen on an ephemeral port of 127.0.0.1, forwarding each connection to host:port as seen
    from the SSH server; yields the local port and stops listening (and forwarding) on exit."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                channel = transport.open_channel("direct-tcpip", (host, port), self.request.getpeername())
            except paramiko.SSHException:  # refused on the remote side: the client sees a closed connection
                return
            with channel:
                _pump(self.request, channel)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"ssh-tunnel-{host}:{port}", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _pump(local: socket.socket, channel: paramiko.Channel) -> None:
    """Copy bytes both ways until either side closes."""
    while True:
        readable, _, _ = select.select([local, channel], [], [])
        for source, sink in ((local, channel), (channel, local)):
            if source in readable:
                data = source.recv(_CHUNK)
                if not data:
                    return
                sink.sendall(data)
