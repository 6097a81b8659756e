"""Rejections the gateway answers with a 4xx/5xx JSON body `{"error": reason, "detail": ...}`.

The same Rejection travels out of every protocol adapter: HTTP answers it as its status with the JSON body,
gRPC as an ack carrying the error (or a status code), MQTT dead-letters the message with the reason. Its
status says whether a retry can help: only 429 and 503 are passing conditions."""

from fleetflow.runtime.httpserver import HttpRefusal

TRANSIENT = frozenset({429, 503})


class Rejection(HttpRefusal):
    @property
    def permanent(self) -> bool:
        return self.status not in TRANSIENT

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}
