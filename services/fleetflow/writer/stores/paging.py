"""Page tokens: opaque to clients, a position in the store's own order to the store that issued them."""

import base64
import binascii
from typing import Any

import msgspec


def encode_token(position: list[Any]) -> str:
    """A URL-safe token for `position` (a JSON-able list of key values)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).decode().rstrip("=")


def decode_token(token: str, arity: int) -> list[Any]:
    """The position in `token`; ValueError naming the token if this store did not issue it."""
    try:
        padded = token + "=" * (-len(token) % 4)
        position = msgspec.json.decode(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, binascii.Error, msgspec.DecodeError):
        position = None
    if not isinstance(position, list) or len(position) != arity:
        raise ValueError(f"page token {token!r} is not one this store issued for this query; omit it to start over")
    return position
