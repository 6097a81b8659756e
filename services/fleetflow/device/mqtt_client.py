"""A device's MQTT connection (3.1.1 or 5) to the NATS MQTT listener, with paho-mqtt on the asyncio loop.

device = MqttDevice("127.0.0.1", 1883, "demo", "pump-1", token)
await device.connect()                      # subscribes to its commands, then announces "online"
await device.send([{"seq": 1, "ts": 1700000000000, "metrics": {"temperature": 4.2}}])  # QoS 1, PUBACK'd
acked = device.send_nowait(readings)        # or keep several QoS 1 messages in flight; await them in order
command = await device.commands.get()       # {"id", "name", "params", "createdMs", "expiresMs"}
await device.report(command["id"], "succeeded")
await device.close()                        # announces "offline" (the will says it if the link drops)

paho's own network loop is a thread per client, and a thread per client is what limited a load generator of
many devices on few cores. Here paho reads and writes when the event loop says its socket is ready (paho's
external-loop callbacks), so many devices share one thread.
"""

import asyncio
import contextlib
import json
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

KEEPALIVE_S = 30
MAX_IN_FLIGHT = 20  # paho's default: QoS 1 messages sent and not yet PUBACK'd; more wait in paho's queue


class MqttRefused(ConnectionError):
    """The broker refused the connection or a subscription; the text says why."""


class MqttDevice:
    def __init__(self, host: str, port: int, fleet: str, device: str, token: str, version: str = "3.1.1",
                 tls_ca_file: str | None = None, username: str | None = None,
                 max_in_flight: int = MAX_IN_FLIGHT):  # fmt: skip
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
        self.client.max_inflight_messages_set(max_in_flight)
        if tls_ca_file:
            self.client.tls_set(ca_certs=tls_ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._pubacks: dict[int, asyncio.Future[None]] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._write_soon = False

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect, subscribe to the command topic (QoS 1) and publish "online"; MqttRefused if refused."""
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connack, self._closed = loop.create_future(), loop.create_future()
        self._callbacks()
        # paho's connect blocks on the TCP (and TLS) handshake; its socket callbacks come back to this loop.
        await asyncio.to_thread(self.client.connect, self.host, self.port, KEEPALIVE_S)
        self._keepalive = loop.create_task(self._keep_alive())
        try:
            code = await asyncio.wait_for(self._connack, timeout)
        except TimeoutError:
            self._stop()
            raise
        if code.is_failure:
            self._stop()
            raise MqttRefused(f"connection refused: {code}")
        await self.subscribe(f"{self.topic}/commands", timeout)
        await self._publish(f"{self.topic}/status", b"online", timeout)

    async def subscribe(self, topic: str, timeout: float = 10.0) -> None:
        assert self._loop is not None
        _, mid = self.client.subscribe(topic, qos=1)
        future = self._subacks[mid or 0] = self._loop.create_future()
        codes = await asyncio.wait_for(future, timeout)
        if any(code.is_failure for code in codes):
            raise MqttRefused(f"subscription to {topic!r} refused: {', '.join(map(str, codes))}")

    async def send(self, readings: list[dict[str, Any]], timeout: float = 10.0) -> None:
        """Publish one batch with QoS 1 and wait for the broker's PUBACK (it is then stored in JetStream)."""
        await asyncio.wait_for(self.send_nowait(readings), timeout)

    def send_nowait(self, readings: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Publish one batch with QoS 1 without waiting: the future completes at the PUBACK, or fails with a
        ConnectionError when the link drops first. The broker keeps a device's messages in the order sent."""
        return self.publish(f"{self.topic}/telemetry", json.dumps({"readings": readings}).encode())

    async def report(self, command_id: str, status: str, detail: str = "", timeout: float = 10.0) -> None:
        body = json.dumps({"id": command_id, "status": status, "detail": detail}).encode()
        await self._publish(f"{self.topic}/results", body, timeout)

    async def close(self) -> None:
        """Say "offline" (so the gateway stops sending commands), then disconnect."""
        if self.client.is_connected():
            with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):  # else the will says it
                await self._publish(f"{self.topic}/status", b"offline", 5)
            self.client.disconnect()
            if self._closed is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._closed), 5)
        self._stop()

    def publish(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """A QoS 1 publish on any topic (tests use it for bodies and topics `send` would not produce)."""
        assert self._loop is not None, "connect() first"
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        future = self._pubacks[info.mid] = self._loop.create_future()
        return future

    async def _publish(self, topic: str, payload: bytes, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.publish(topic, payload), timeout)
        except TimeoutError:
            raise TimeoutError(f"no PUBACK for {topic!r} within {timeout}s") from None

    def _callbacks(self) -> None:
        client = self.client
        client.on_connect, client.on_disconnect = self._on_connect, self._on_disconnect
        client.on_subscribe, client.on_publish = self._on_subscribe, self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = lambda _c, _u, sock: self._on_loop(self._watch, sock)
        client.on_socket_close = lambda _c, _u, sock: self._on_loop(self._unwatch, sock)
        client.on_socket_register_write = lambda _c, _u, sock: self._on_loop(self._want_write, sock, True)
        client.on_socket_unregister_write = lambda _c, _u, sock: self._on_loop(self._want_write, sock, False)

    def _on_loop(self, call: Callable[..., None], *args: Any) -> None:
        """paho calls back on the thread that called it: connect() runs in a worker thread, and asyncio's
        selector may only be changed from the loop's own thread."""
        assert self._loop is not None
        if threading.get_ident() == self._loop_thread:
            call(*args)
        else:
            self._loop.call_soon_threadsafe(call, *args)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        self._fd = sock.fileno()  # kept: a socket closed before its callback ran has no fileno() any more
        self._loop.add_reader(self._fd, self.client.loop_read)

    def _unwatch(self, _sock: Any = None) -> None:
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
            self._fd = None

    def _want_write(self, _sock: Any, wanted: bool) -> None:
        """paho has bytes to send (it says so once until they are all sent). They are written at the end of
        this loop iteration, together with whatever else is published meanwhile; only a full socket waits for
        the selector, which spares two selector changes per message."""
        if self._loop is None or self._fd is None:
            return
        if not wanted:
            self._loop.remove_writer(self._fd)
        elif not self._write_soon:
            self._write_soon = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._write_soon = False
        self.client.loop_write()
        if self.client.want_write() and self._loop is not None and self._fd is not None:
            self._loop.add_writer(self._fd, self._write)  # the socket is full: write when it drains

    async def _keep_alive(self) -> None:
        """paho's pings and keep-alive checks, which its own loop would run; ends with the connection."""
        while True:
            await asyncio.sleep(1)
            if self.client.loop_misc() != mqtt.MQTT_ERR_SUCCESS:
                return

    def _stop(self) -> None:
        """Leave the loop and close a socket paho did not close itself (a refused or timed-out connect)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._unwatch()
        sock = self.client.socket()
        if sock is not None:
            sock.close()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any = None) -> None:
        if self._connack is not None:
            _settle(self._connack, code)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, code: ReasonCode, _p: Any = None) -> None:
        waiting: list[asyncio.Future[Any]] = [*self._pubacks.values(), *self._subacks.values()]
        for future in waiting:
            if not future.done():
                future.set_exception(ConnectionError(f"the connection to the broker was lost: {code}"))
        self._pubacks.clear()
        self._subacks.clear()
        if self._closed is not None:
            _settle(self._closed, None)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any = None) -> None:
        future = self._subacks.pop(mid, None)
        if future is not None:
            _settle(future, codes)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _code: ReasonCode, _p: Any = None) -> None:
        future = self._pubacks.pop(mid, None)
        if future is not None:
            _settle(future, None)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == f"{self.topic}/commands":
            try:
                command = json.loads(message.payload)
            except ValueError:
                return
            self.commands.put_nowait(command)


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)
