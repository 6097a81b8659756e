"""Rejections the gateway answers with a 4xx/5xx JSON body `{"error": reason, "detail": ...}`."""


class Rejection(Exception):
    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None):
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers or {}
        super().__init__(detail)

    def body(self) -> dict[str, str]:
        return {"error": self.reason, "detail": self.detail}
