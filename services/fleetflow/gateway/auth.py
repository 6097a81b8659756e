"""Device authentication: a bearer token derived from the fleet secret and the device id."""

from functools import lru_cache

from fleetflow.gateway.errors import Rejection
from fleetflow.runtime import credentials


class DeviceAuthenticator:
    def __init__(self, fleet: str, fleet_secret: bytes):
        self.fleet = fleet
        # Deriving a token is an HMAC; cache it per device so a busy device costs one dict look-up.
        self._expected = lru_cache(maxsize=100_000)(
            lambda device: credentials.device_token(fleet_secret, fleet, device)
        )

    def authenticate(self, device: str, authorization: str | None) -> None:
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
        if not credentials.constant_time_equal(self._expected(device), token.strip()):
            raise Rejection(
                401,
                "invalid_token",
                f"the bearer token is not valid for device {device!r} of fleet {self.fleet!r}",
                {"WWW-Authenticate": 'Bearer realm="fleetflow", error="invalid_token"'},
            )
