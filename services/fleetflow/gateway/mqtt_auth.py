"""MQTT device authentication: the gateway serves NATS auth callout for the MQTT listener of nats-server.

A device connects with username `<fleet>/<device>`, its device token as password, and client id equal to the
username. nats-server asks the gateway (on `$SYS.REQ.USER.AUTH`, in the account configured for the callout)
whether to admit the connection; the gateway checks the token and answers with a user JWT, signed with the
callout issuer's account nkey, that allows exactly the device's own topics:

    publish   fleetflow/<fleet>/<device>/telemetry   readings, the same JSON body as HTTP, QoS 1
    publish   fleetflow/<fleet>/<device>/results     {"id": ..., "status": "succeeded"|"failed"|"rejected"}
    publish   fleetflow/<fleet>/<device>/status      "online" after subscribing; "offline" (also the will)
    subscribe fleetflow/<fleet>/<device>/commands    commands, JSON, each delivered once

So a device cannot publish, subscribe or receive as another device: its token is only valid for its own id,
the client id must match (no taking over another device's MQTT session), and the server enforces the
permissions. Requests for another fleet's devices are left to that fleet's gateway (no answer here).

Where the MQTT listener verifies client certificates against the fleet's device CA (`tls { verify: true }`, for
spec.gateway.tls.clientAuth.mode Required), the request carries the verified chain (`client_tls`), and a
certificate whose subject CN is the device id stands in for the token, as on the gateway's own listeners.

The nats.conf side (accounts, the callout, the anonymous MQTT user) is `fleetflow.runtime.natsauth`."""

import base64
import json
import re
import secrets
import time
from typing import Any

import nkeys
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from nats.aio.client import Client
from nats.aio.msg import Msg
from opentelemetry.metrics import Meter

from fleetflow.api import DeviceFleet
from fleetflow.api.identifiers import DEVICE_ID
from fleetflow.gateway.auth import DeviceAuthenticator, device_named
from fleetflow.gateway.errors import Rejection
from fleetflow.runtime.natsauth import AUTH_SUBJECT, SERVICE_ACCOUNT

log = structlog.get_logger(__name__)


def topic_prefix(fleet: str, device: str) -> str:
    return f"fleetflow/{fleet}/{device}"


def subject_prefix(fleet: str, device: str) -> str:
    """The NATS subject of a topic: nats-server maps MQTT '/' to '.'."""
    return f"fleetflow.{fleet}.{device}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Refusal(Exception):
    """Why a connection is not admitted; nats-server logs the text."""


class MqttAuthorizer:
    """Answers nats-server's authorization requests for this fleet's MQTT devices."""

    def __init__(self, fleet: DeviceFleet, fleet_secret: bytes, issuer_seed: bytes, meter: Meter,
                 previous_secret: bytes | None = None):  # fmt: skip
        self.fleet = fleet.name
        self.id_pattern = re.compile(fleet.spec.devices.id_pattern)
        self.auth = DeviceAuthenticator(fleet.name, fleet_secret, previous_secret)
        self.keys = nkeys.from_seed(issuer_seed)
        self.issuer = self.keys.public_key.decode()
        self.decisions = meter.create_counter(
            "fleetflow_gateway_mqtt_connections", unit="1", description="MQTT connection attempts, by outcome"
        )
        for outcome in ("admitted", "refused"):  # exported at 0, so that increase() sees the first one
            self.decisions.add(0, {"outcome": outcome})

    async def subscribe(self, nc: Client) -> Any:
        """Answer the server's authorization requests on `nc`, from the moment this returns: the flush is the
        server's word that it has the subscription. Without it an MQTT device connecting right after the gateway
        said it was ready could find no one to ask, and was refused ("Not authorized")."""
        subscription = await nc.subscribe(AUTH_SUBJECT, cb=self._on_request)
        await nc.flush()
        return subscription

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = json.loads(_unb64(msg.data.decode().split(".")[1]))["nats"]
        except (ValueError, IndexError, KeyError):
            log.warning("authorization request is not a JWT; ignored")
            return
        username = str(request.get("connect_opts", {}).get("user", ""))
        fleet, _, device = username.partition("/")
        if fleet != self.fleet and "/" in username:
            return  # another fleet's gateway answers it
        try:
            permissions = self.admit(request, device)
        except Refusal as refusal:
            self.decisions.add(1, {"outcome": "refused"})
            log.info("mqtt connection refused", device=device, reason=str(refusal))
            await msg.respond(self._response(request, error=str(refusal)).encode())
            return
        self.decisions.add(1, {"outcome": "admitted"})
        user_jwt = self._sign(
            {
                "aud": SERVICE_ACCOUNT,
                "sub": request["user_nkey"],
                "name": username,
                "nats": {**permissions, "type": "user", "version": 2},
            }
        )
        await msg.respond(self._response(request, user_jwt=user_jwt).encode())

    def admit(self, request: dict[str, Any], device: str) -> dict[str, Any]:
        """The device's permissions, or Refusal saying why it may not connect."""
        client = request.get("client_info", {})
        if not device:
            raise Refusal("MQTT devices connect with username '<fleet>/<device>' and their device token")
        if client.get("type") != "mqtt":
            raise Refusal(f"device credentials are for MQTT only, not {client.get('type')!r} connections")
        if not DEVICE_ID.fullmatch(device) or not self.id_pattern.search(device):
            raise Refusal(f"device id {device!r} is not valid in fleet {self.fleet!r}")
        username = f"{self.fleet}/{device}"
        if client.get("mqtt_id") != username:
            raise Refusal(f"MQTT client id {client.get('mqtt_id')!r} must equal the username {username!r}")
        self._authenticate(request, device, username)
        prefix = subject_prefix(self.fleet, device)
        return {
            "pub": {"allow": [f"{prefix}.telemetry", f"{prefix}.results", f"{prefix}.status"]},
            "sub": {"allow": [f"{prefix}.commands"]},
        }

    def _authenticate(self, request: dict[str, Any], device: str, username: str) -> None:
        """The device's verified certificate or, without one, its token as the password: decided by the one
        authenticator every protocol uses (auth.py)."""
        token = str(request.get("connect_opts", {}).get("pass", "")).strip()
        try:
            self.auth.authenticate(device, f"Bearer {token}" if token else None,
                                   certified_device(request.get("client_tls")))  # fmt: skip
        except Rejection as rejection:
            if rejection.reason == "certificate_mismatch":
                raise Refusal(rejection.detail) from None
            raise Refusal(f"the password is not the device token of {username!r}") from None

    def _response(self, request: dict[str, Any], user_jwt: str = "", error: str = "") -> str:
        body: dict[str, Any] = {"type": "authorization_response", "version": 2}
        if user_jwt:
            body["jwt"] = user_jwt
        if error:
            body["error"] = error
        return self._sign({"aud": request["server_id"]["id"], "sub": request["user_nkey"], "nats": body})

    def _sign(self, claims: dict[str, Any]) -> str:
        claims = {**claims, "iss": self.issuer, "iat": int(time.time()), "jti": secrets.token_hex(16)}
        header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signature = self.keys.sign(f"{header}.{payload}".encode())
        return f"{header}.{payload}.{_b64(signature)}"


def certified_device(client_tls: dict[str, Any] | None) -> str | None:
    """The subject CN of the client certificate nats-server verified (the leaf of `client_tls.verified_chains`), or
    None without one. Unverified certificates (`client_tls.certs`, where the listener does not verify) are ignored:
    anyone can make one."""
    chains = (client_tls or {}).get("verified_chains") or []
    if not chains or not chains[0]:
        return None
    leaf = x509.load_pem_x509_certificate(str(chains[0][0]).encode())
    return device_named([str(name.value) for name in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)])
