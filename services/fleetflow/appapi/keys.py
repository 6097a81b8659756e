"""API keys: per fleet, each with a scope, stored hashed in a JSON file (under the data dir locally; a mounted
Secret on a cluster). The service re-reads the file when it changes, so a revoked key stops working at once.

A key reads `ffk_<id>_<secret>`: the id finds the entry, the secret is compared with its SHA-256. The secret
holds 256 random bits, so a plain hash is as strong as a slow one here (nothing to brute-force) and costs
microseconds per request."""

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
from aiohttp import web

from fleetflow.runtime.httpserver import HttpRefusal

# Each scope includes the ones before it: a command key also reads, an admin key does everything.
SCOPES = ("read", "command", "admin")
PREFIX = "ffk"
KEYS_DIR = "api-keys"


class KeyRequestError(ValueError):
    """A key management request that cannot be done (unknown scope or key id); the message says why."""


class ApiKey(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    fleet: str
    scope: str
    sha256: str
    created_ms: int
    name: str = ""
    revoked_ms: int | None = None

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def summary(self) -> dict[str, object]:
        """What `fleetflow api-key list` shows: never the hash."""
        return {"id": self.id, "fleet": self.fleet, "scope": self.scope, "name": self.name,
                "createdMs": self.created_ms, "revokedMs": self.revoked_ms}  # fmt: skip


API_KEY = web.RequestKey("api_key", ApiKey)  # the key a request was authenticated with


class KeyFile(msgspec.Struct):
    keys: list[ApiKey] = []


_decoder = msgspec.json.Decoder(KeyFile)


def keys_file(data_dir: Path, fleet: str) -> Path:
    """Where a fleet's keys live under a local data dir."""
    return data_dir / KEYS_DIR / f"{fleet}.json"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def read_keys(path: Path) -> list[ApiKey]:
    """The keys in `path` (none if it does not exist); ValueError naming the file if it is not a key file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    try:
        return _decoder.decode(data).keys
    except msgspec.DecodeError as exc:
        raise ValueError(f"API key file {path} is not valid: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the key file between concurrent `fleetflow api-key` commands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, keys: list[ApiKey]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # hashes only, but still nobody else's
    with os.fdopen(fd, "wb") as out:
        out.write(msgspec.json.format(msgspec.json.encode(KeyFile(keys))))
    tmp.replace(path)


def create_key(path: Path, fleet: str, scope: str, name: str = "") -> tuple[ApiKey, str]:
    """A new key of `fleet` with `scope`, stored hashed; returns it and the key text (shown only now)."""
    if scope not in SCOPES:
        raise KeyRequestError(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(id=key_id, fleet=fleet, scope=scope, sha256=_digest(secret), created_ms=int(time.time() * 1000),
                 name=name)  # fmt: skip
    with _locked(path):
        _write(path, [*read_keys(path), key])
    return key, f"{PREFIX}_{key_id}_{secret}"


def revoke_key(path: Path, key_id: str) -> ApiKey:
    """Mark the key revoked (kept, so `list` still shows who had access until when)."""
    with _locked(path):
        keys = read_keys(path)
        found = next((k for k in keys if k.id == key_id), None)
        if found is None:
            known = ", ".join(k.id for k in keys) or "none"
            raise KeyRequestError(f"no API key with id {key_id!r} in {path}; known ids: {known}")
        if found.revoked_ms is None:
            found.revoked_ms = int(time.time() * 1000)
            _write(path, keys)
    return found


class ApiKeys:
    """The service's view of a fleet's key file, re-read whenever the file changes."""

    def __init__(self, path: Path, fleet: str):
        self.path, self.fleet = path, fleet
        self._seen: tuple[int, int] | None = None
        self._by_id: dict[str, ApiKey] = {}

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
            seen = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = (0, 0)
        if seen != self._seen:
            self._by_id = {k.id: k for k in read_keys(self.path) if k.fleet == self.fleet}
            self._seen = seen

    def all(self) -> list[ApiKey]:
        self._refresh()
        return list(self._by_id.values())

    def authenticate(self, authorization: str | None, scope: str) -> ApiKey:
        """The key presented as `Bearer <key>`: 401 if missing, unknown, wrong or revoked; 403 if its scope is
        not enough for `scope`."""
        challenge = {"WWW-Authenticate": f'Bearer realm="fleetflow", scope="{scope}"'}
        if not authorization or not authorization.startswith("Bearer "):
            raise HttpRefusal(401, "unauthenticated", "send an API key as `Authorization: Bearer <key>`; create one "
                              f"with `fleetflow api-key create {self.fleet} --scope {scope}`", challenge)  # fmt: skip
        self._refresh()
        prefix, _, rest = authorization.removeprefix("Bearer ").strip().partition("_")
        key_id, _, secret = rest.partition("_")
        key = self._by_id.get(key_id) if prefix == PREFIX else None
        if key is None or not hmac.compare_digest(key.sha256, _digest(secret)):
            raise HttpRefusal(401, "invalid_key", f"the API key is not a key of fleet {self.fleet!r}", challenge)
        if key.revoked_ms is not None:
            raise HttpRefusal(401, "revoked_key", f"API key {key.id} was revoked", challenge)
        if not key.allows(scope):
            raise HttpRefusal(403, "insufficient_scope", f"API key {key.id} has scope {key.scope!r}; this request "
                              f"needs {scope!r} (or a scope that includes it: {', '.join(SCOPES)})")  # fmt: skip
        return key
