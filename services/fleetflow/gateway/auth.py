"""Device authentication: an X.509 client certificate the TLS handshake verified against the fleet's device CA
(spec.gateway.tls.clientAuth), or else a bearer token derived from the fleet secret and the device id.

A certificate names its device by its subject CN. The TLS layer has already checked that the fleet's device CA
signed it; here it is only matched against the device a request is for."""

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from fleetflow.gateway.errors import Rejection
from fleetflow.runtime import credentials


class DeviceAuthenticator:
    """Accepts the token derived from the fleet secret and, while a rotation overlaps the two, the token derived
    from the previous one."""

    def __init__(self, fleet: str, fleet_secret: bytes, previous_secret: bytes | None = None):
        self.fleet = fleet
        accepted = [fleet_secret] if previous_secret is None else [fleet_secret, previous_secret]
        # Deriving a token is an HMAC; cache it per device so a busy device costs one dict look-up.
        self._expected = lru_cache(maxsize=100_000)(
            lambda device: tuple(credentials.device_token(secret, fleet, device) for secret in accepted)
        )

    def authenticate(self, device: str, authorization: str | None, certified: str | None = None) -> None:
        """`certified`: the device id of the client certificate the TLS handshake verified (None: none was)."""
        if certified is not None:
            _match_certificate(device, certified)
            return
        if not authorization:
            raise Rejection(
                401,
                "missing_token",
                "no Authorization header; send 'Authorization: Bearer <device token>'",
                {"WWW-Authenticate": 'Bearer realm="fleetflow"'},
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejection(
                401,
                "missing_token",
                f"Authorization scheme {scheme!r} is not accepted; send 'Authorization: Bearer <device token>'",
                {"WWW-Authenticate": 'Bearer realm="fleetflow"'},
            )
        presented = token.strip()
        # Every candidate is compared, so the time taken does not tell which key a token was close to.
        matches = [credentials.constant_time_equal(expected, presented) for expected in self._expected(device)]
        if not any(matches):
            raise Rejection(
                401,
                "invalid_token",
                f"the bearer token is not valid for device {device!r} of fleet {self.fleet!r}",
                {"WWW-Authenticate": 'Bearer realm="fleetflow", error="invalid_token"'},
            )


def _match_certificate(device: str, certified: str) -> None:
    if not certified:
        raise Rejection(403, "certificate_mismatch", "the client certificate does not have exactly one subject "
                        "CN; a device certificate's one subject CN is its device id "
                        f"({device!r} for this request)")  # fmt: skip
    if certified != device:
        raise Rejection(403, "certificate_mismatch", f"the client certificate names device {certified!r} (its subject "
                        f"CN), not {device!r}, the device of this request; a device acts only as itself")  # fmt: skip


def certified_device(peercert: Mapping[str, Any] | None) -> str | None:
    """The device id (subject CN) of a verified peer certificate as Python's ssl module gives it (`getpeercert()`,
    empty or None when the client sent none): None without a certificate (see `device_named`)."""
    if not peercert:
        return None
    return device_named(
        [str(value) for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    )


def device_named(common_names: Sequence[str]) -> str:
    """The device a certificate's subject CNs name: its one CN, or "" (refused by authenticate()) for a certificate
    with none or with several, which would speak for whichever CN a reader takes first."""
    return common_names[0] if len(common_names) == 1 else ""
