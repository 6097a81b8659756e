"""The NATS users of the local platform, and their passwords: made once per data dir, one file each under it
(mode 0600).

Each service kind logs in as its own user, so nats-server's log and /connz tell which one did what; `admin` is
`fleetflow up` itself, the CLI and whoever debugs with a NATS client; `auth` is the gateways' connection that
answers the MQTT auth callout, alone in the callout's account (see fleetflow.runtime.natsauth)."""

from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from fleetflow.local import private
from fleetflow.runtime import natsauth
from fleetflow.runtime.natsauth import CALLOUT_USER, NatsLogin

GATEWAY, PROCESSOR, WRITER, APPAPI, ADMIN = "gateway", "processor", "writer", "appapi", "admin"
SERVICE_USERS = (GATEWAY, PROCESSOR, WRITER, APPAPI, ADMIN)  # the users of the streams' account
USERS = (*SERVICE_USERS, CALLOUT_USER)


class NatsUnreachable(OSError):
    """Nothing answers at the NATS URL (the platform stopped, or was killed): not a login problem."""


class NatsLoginError(ValueError):
    """The CLI cannot log in to the local NATS; the message says why and what to do, in one line."""


def password_file(data_dir: Path, user: str) -> Path:
    return data_dir / "secrets" / "nats" / f"{user}.password"


def ensure_passwords(data_dir: Path) -> dict[str, str]:
    """Every user's password, each made on first use."""
    passwords = {}
    for user in USERS:
        path = password_file(data_dir, user)
        if not path.exists():
            private.create_private(path, f"{natsauth.new_password()}\n".encode())
        passwords[user] = path.read_text().strip()
    return passwords


def server_auth(passwords: dict[str, str], mqtt_port: int, issuer_seed: bytes) -> natsauth.ServerAuth:
    """nats.conf's authentication for these users, MQTT on loopback."""
    users = tuple(natsauth.ServiceUser(user, natsauth.quoted(passwords[user])) for user in SERVICE_USERS)
    callout = natsauth.ServiceUser(CALLOUT_USER, natsauth.quoted(passwords[CALLOUT_USER]))
    return natsauth.ServerAuth.local("127.0.0.1", mqtt_port, issuer_seed, users, callout)


def admin_login(data_dir: Path) -> NatsLogin:
    """How the CLI logs in to the NATS of the platform running on `data_dir`."""
    path = password_file(data_dir, ADMIN)
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise NatsLoginError(
            f"cannot read the NATS password of user {ADMIN!r} from {path} ({exc.strerror}); "
            f"`fleetflow up --data-dir {data_dir}` makes it"
        ) from None
    if not password:
        raise NatsLoginError(f"{path} is empty; it must hold the NATS password of user {ADMIN!r}")
    return NatsLogin(ADMIN, password)


async def connect_admin(data_dir: Path, url: str, **options: Any) -> Client:
    """The CLI's connection to the NATS of the platform running on `data_dir`; NatsLoginError says why not."""
    login, source = admin_login(data_dir), password_file(data_dir, ADMIN)
    failures: list[Exception] = []

    async def keep(exc: Exception) -> None:
        """Instead of nats-py's log of each attempt with a traceback: the error below says it in one line."""
        failures.append(exc)

    try:
        return await nats.connect(url, user=login.user, password=login.password, error_cb=keep, **options)
    except (nats.errors.Error, OSError) as exc:
        failures.append(exc)
    if any("authorization violation" in str(failure).lower() for failure in failures):
        raise NatsLoginError(
            f"NATS at {url} refused user {login.user!r} with the password in {source}: the nats-server there "
            "was not started with this data dir, or the file changed since; restart `fleetflow up`"
        )
    raise NatsUnreachable(f"cannot connect to NATS at {url} ({failures[-1]}); is `fleetflow up` running?")
