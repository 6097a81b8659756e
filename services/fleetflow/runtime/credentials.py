"""Per-device tokens derived from one fleet secret, so the gateway needs no device database.

token = base64url(HMAC-SHA256(fleet secret, "<fleet>/<device>")) without padding."""

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_BYTES = 32


def device_token(fleet_secret: bytes, fleet: str, device: str) -> str:
    digest = hmac.new(fleet_secret, f"{fleet}/{device}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def local_secret_path(data_dir: Path, fleet: str) -> Path:
    return data_dir / "secrets" / f"{fleet}.key"


def ensure_local_secret(data_dir: Path, fleet: str) -> bytes:
    """Read the fleet secret from the data dir, creating it (mode 0600) on first use."""
    path = local_secret_path(data_dir, fleet)
    if path.exists():
        return read_secret(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = base64.b64encode(secrets.token_bytes(SECRET_BYTES))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(value + b"\n")
    return value


def read_secret(path: Path) -> bytes:
    """The secret is the file's content without surrounding whitespace, as a mounted Secret key gives it."""
    value = path.read_bytes().strip()
    if len(value) < 16:
        raise ValueError(f"fleet secret in {path} is {len(value)} bytes; at least 16 are needed")
    return value


# During an explicit rotation the Secret holds the new key under its name and the old one under the same name with
# this suffix; a gateway accepts tokens of both until the old one is retired (docs/operator.md, "Rotating").
PREVIOUS_SUFFIX = ".previous"


def previous_secret_path(path: Path) -> Path:
    """Where the previous fleet secret lies beside the current one, while a rotation overlaps them."""
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def read_previous_secret(path: Path) -> bytes | None:
    """The previous fleet secret beside `path` if a rotation is in its overlap, else None."""
    previous = previous_secret_path(path)
    return read_secret(previous) if previous.exists() else None


def constant_time_equal(expected: str, presented: str) -> bool:
    # "replace": a header that is not valid UTF-8 is a wrong token, not an encoding error.
    return hmac.compare_digest(expected.encode(), presented.encode("utf-8", "replace"))
