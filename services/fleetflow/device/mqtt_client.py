"""A device's MQTT connection (3.1.1 or 5) to the NATS MQTT listener, with paho-mqtt.

device = MqttDevice("127.0.0.1", 1883, "demo", "pump-1", token)
await device.connect()                      # subscribes to its commands, then announces "online"
await device.send([{"seq": 1, "ts": 1700000000000, "metrics": {"temperature": 4.2}}])  # QoS 1, PUBACK'd
command = await device.commands.get()       # {"id", "name", "params", "createdMs", "expiresMs"}
await device.report(command["id"], "succeeded")
await device.close()                        # announces "offline" (the will says it if the link drops)
"""

import asyncio
import contextlib
import json
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode


class MqttRefused(ConnectionError):
    """The broker refused the connection or a subscription; the text says why."""


class MqttDevice:
    def __init__(self, host: str, port: int, fleet: str, device: str, token: str, version: str = "3.1.1",
                 tls_ca_file: str | None = None, username: str | None = None):  # fmt: skip
        self.host, self.port = host, port
        self.topic = f"fleetflow/{fleet}/{device}"
        # The gateway admits `<fleet>/<device>` as username and client id; others are for testing refusals.
        self.username = f"{fleet}/{device}" if username is None else username
        protocol = mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311
        client_id = self.username or f"{fleet}/{device}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if self.username:
            self.client.username_pw_set(self.username, token)
        self.client.will_set(f"{self.topic}/status", b"offline", qos=1)
        if tls_ca_file:
            self.client.tls_set(ca_certs=tls_ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._lock = threading.Lock()

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect, subscribe to the command topic (QoS 1) and publish "online"; MqttRefused if refused."""
        self._loop = asyncio.get_running_loop()
        self._connack = self._loop.create_future()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        await asyncio.to_thread(self.client.connect, self.host, self.port, 30)
        self.client.loop_start()
        code = await asyncio.wait_for(self._connack, timeout)
        if code.is_failure:
            self.client.loop_stop()
            raise MqttRefused(f"connection refused: {code}")
        await self.subscribe(f"{self.topic}/commands", timeout)
        await self._publish(f"{self.topic}/status", b"online", timeout)

    async def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        assert self._loop is not None
        future: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        with self._lock:  # the SUBACK may arrive (on paho's thread) before subscribe() returns its id
            _, mid = self.client.subscribe(topic, qos=1)
            self._subacks[mid or 0] = future
        codes = await asyncio.wait_for(future, timeout)
        if any(code.is_failure for code in codes):
            raise MqttRefused(f"subscription to {topic!r} refused: {', '.join(map(str, codes))}")

    async def send(self, readings: list[dict[str, Any]], timeout: float = 10.0) -> None:
        """Publish one batch with QoS 1 and wait for the broker's PUBACK (it is then stored in JetStream)."""
        await self._publish(f"{self.topic}/telemetry", json.dumps({"readings": readings}).encode(), timeout)

    async def report(self, command_id: str, status: str, detail: str = "", timeout: float = 10.0) -> None:
        body = json.dumps({"id": command_id, "status": status, "detail": detail}).encode()
        await self._publish(f"{self.topic}/results", body, timeout)

    async def close(self) -> None:
        """Say "offline" (so the gateway stops sending commands), then disconnect."""
        if self.client.is_connected():
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):  # else the will says it
                await self._publish(f"{self.topic}/status", b"offline", 5)
            self.client.disconnect()
        self.client.loop_stop()

    async def _publish(self, topic: str, payload: bytes, timeout: float) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        await asyncio.to_thread(info.wait_for_publish, timeout)
        if not info.is_published():
            raise TimeoutError(f"no PUBACK for {topic!r} within {timeout}s")

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any = None) -> None:
        if self._loop and self._connack and not self._connack.done():
            self._loop.call_soon_threadsafe(_settle, self._connack, code)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any = None) -> None:
        with self._lock:
            future = self._subacks.pop(mid, None)
        if self._loop and future:
            self._loop.call_soon_threadsafe(_settle, future, codes)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if self._loop and message.topic == f"{self.topic}/commands":
            try:
                command = json.loads(message.payload)
            except ValueError:
                return
            self._loop.call_soon_threadsafe(self.commands.put_nowait, command)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
