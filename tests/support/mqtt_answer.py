"""How an MQTT listener answers a real paho client's CONNECT: the tests of who may connect read it."""

import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt


def connect_and_wait(client: mqtt.Client, port: int, timeout: float = 20) -> str:
    """Connect `client` (configured: credentials, TLS) to 127.0.0.1:`port` and return how the server answered:
    "Success" if admitted, the CONNACK's reason, "disconnected: ...", "refused: ..." (TLS or socket) or "no answer".
    The client's network loop is left running: the caller disconnects it."""
    answers: list[str] = []
    answered = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answers.append(str(reason))
        answered.set()

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answers.append(f"disconnected: {reason}")
        answered.set()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    try:
        client.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    client.loop_start()
    answered.wait(timeout)
    return answers[0] if answers else "no answer"
