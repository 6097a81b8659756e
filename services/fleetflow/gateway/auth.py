"""Device authentication: a bearer token derived from the fleet secret and the device id."""

from functools import lru_cache

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
