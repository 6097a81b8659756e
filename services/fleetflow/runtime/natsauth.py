"""Who may connect to a fleet's NATS: the accounts, users and MQTT auth callout of nats.conf, and the login the
services connect with.

One account, FLEETFLOW, holds the streams; in it the services are plain-NATS users. MQTT devices are admitted
one by one through auth callout, which the gateway serves (`fleetflow.gateway.mqtt_auth`), as FLEETFLOW users
allowed only their own topics. An MQTT client without credentials becomes `mqtt-anonymous` (MQTT connections
only), which the callout refuses. The system account has no users, and no connection logs in without
credentials.

Local mode and the operator render this from one function. Local mode writes the values inline, has a user per
service kind (`fleetflow.local.natslogins`), and gives the callout an account of its own, AUTH, whose only user
is the gateways' callout connection: the callout's requests carry the devices' tokens, and no other user can
subscribe to them or capture them in a stream. The operator writes `$VARIABLE` references that nats-server
fills in from its environment, which the StatefulSet takes from the fleet's Secret; there every service and the
operator share one services' user, which also serves the callout in FLEETFLOW."""

import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

import nkeys

SERVICE_ACCOUNT = "FLEETFLOW"  # the account of the fleet's streams, the services and the MQTT devices
SYSTEM_ACCOUNT = "SYS"
CALLOUT_ACCOUNT = "AUTH"  # where the callout's requests go, when it has an account of its own (local mode)
SERVICE_USER = "fleetflow"
CALLOUT_USER = "auth"  # the user of the callout's own account, which the gateways answer the callout as
ANONYMOUS_USER = "mqtt-anonymous"  # what an MQTT client without credentials is; the callout refuses it
AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"  # where nats-server asks the callout (the gateway) to admit an MQTT device
PASSWORD_LENGTH = 40
# Letters and digits, a letter first: nats-server parses an environment variable's value as a config value
# (digits alone would become a number, `#` a comment), and a cluster route URL carries the password as it is.
PASSWORD_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class NatsLogin:
    """The user and password a service connects with, where NATS has no default user."""

    user: str
    password: str

    @classmethod
    def from_file(cls, user: str, password_file: Path) -> "NatsLogin":
        """The password is the file's content without surrounding whitespace, as a mounted Secret key gives it."""
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"nats_password_file = {str(password_file)!r}: cannot read it ({exc.strerror})") from None
        if not password:
            raise ValueError(f"nats_password_file = {str(password_file)!r} is empty; it must hold the password")
        return cls(user, password)


def new_password() -> str:
    return secrets.choice(string.ascii_letters) + "".join(
        secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH - 1)
    )


def new_issuer_seed() -> bytes:
    """A fresh account nkey seed (`SA...`) for signing the user JWTs of MQTT devices."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_ACCOUNT))


def ensure_issuer_seed(path: Path) -> bytes:
    """Read the issuer seed, creating it (mode 0600) on first use."""
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    seed = new_issuer_seed()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(seed + b"\n")
    return seed


def issuer_public_key(seed: bytes) -> str:
    return str(nkeys.from_seed(seed).public_key.decode())


def quoted(value: str) -> str:
    """A value written into nats.conf as it is."""
    return f'"{value}"'


def from_environment(variable: str) -> str:
    """A value nats-server takes from its environment variable when it reads nats.conf."""
    return f"${variable}"


@dataclass(frozen=True)
class ServiceUser:
    """A plain-NATS user that bypasses the callout. The password is a nats.conf value."""

    name: str
    password: str

    def entry(self) -> str:
        return f"{{ user: {self.name}, password: {self.password}, allowed_connection_types: [STANDARD] }}"


@dataclass(frozen=True)
class LinkedAccounts:
    """Accounts beside the streams' account, and what the streams' account imports from them: on a hub of edge
    sites, one account per site (fleetflow.runtime.edgelink.hub_site_accounts). nats.conf values, rendered."""

    accounts: tuple[str, ...] = ()
    imports: tuple[str, ...] = ()
    users: tuple[str, ...] = ()  # their users, whom nats-server admits itself (not the callout)
    # Users of the system account (rendered entries, their names in `users`): on a cluster, the operator's
    # read-only view of the leaf connections (fleetflow.operator.builders.sites).
    system_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerAuth:
    """What nats.conf's authentication needs. The issuer and the passwords are nats.conf values: `quoted(...)`
    or `from_environment(...)`."""

    mqtt_listen: str  # host:port of the MQTT listener
    issuer: str  # the public account nkey whose signature on a device's user JWT nats-server trusts
    users: tuple[ServiceUser, ...]  # the services' users, in the streams' account
    anonymous_password: str  # never used to log in; without one, the user would be admitted without the callout
    # The user that answers the callout, alone in the callout's own account, so that no other user can hear the
    # requests (they carry the devices' tokens), not even through a stream. None: the callout is served in the
    # streams' account, by a services' user (the operator's, which every service shares).
    callout_user: ServiceUser | None = None
    mqtt_tls: tuple[str, str] | None = None  # (certificate file, key file): MQTT devices connect over TLS only
    # With mqtt_tls: MQTT devices must present a certificate this CA (PEM file) signed; the callout gets it.
    mqtt_device_ca: str | None = None
    linked: LinkedAccounts = LinkedAccounts()

    @classmethod
    def local(
        cls,
        mqtt_host: str,
        mqtt_port: int,
        issuer_seed: bytes,
        users: tuple[ServiceUser, ...],
        callout_user: ServiceUser,
    ) -> "ServerAuth":
        """Local mode: values inline."""
        return cls(
            mqtt_listen=f"{mqtt_host}:{mqtt_port}",
            issuer=quoted(issuer_public_key(issuer_seed)),
            users=users,
            anonymous_password=quoted(secrets.token_hex(16)),
            callout_user=callout_user,
        )

    @property
    def callout_account(self) -> str:
        return SERVICE_ACCOUNT if self.callout_user is None else CALLOUT_ACCOUNT

    @property
    def callout_bypass(self) -> list[str]:
        """Users nats-server admits itself; every other connection is for the callout to admit or refuse."""
        callout = [] if self.callout_user is None else [self.callout_user.name]
        return [user.name for user in self.users] + callout + list(self.linked.users)


def tls_block(cert_file: str, key_file: str, ca_file: str | None = None, indent: str = "") -> list[str]:
    """A nats.conf `tls {}` block; with `ca_file` the server also verifies its peers (cluster routes, MQTT devices
    with certificates): a peer without a certificate that CA signed fails the handshake."""
    lines = [f"{indent}tls {{", f'{indent}  cert_file: "{cert_file}"', f'{indent}  key_file: "{key_file}"']
    if ca_file:
        lines += [f'{indent}  ca_file: "{ca_file}"', f"{indent}  verify: true"]
    return [*lines, f"{indent}}}"]


def server_config(auth: ServerAuth) -> str:
    """The nats.conf lines that enable MQTT with devices authenticated by the gateway, and the services' users."""
    entries = [user.entry() for user in auth.users]
    entries.append(
        f"{{ user: {ANONYMOUS_USER}, password: {auth.anonymous_password}, allowed_connection_types: [MQTT] }}"
    )
    callout_account = (
        [] if auth.callout_user is None else [f"  {CALLOUT_ACCOUNT} {{ users: [ {auth.callout_user.entry()} ] }}"]
    )
    system_users = f" users: [ {', '.join(auth.linked.system_users)} ]" if auth.linked.system_users else ""
    return "\n".join(
        [
            "mqtt {",
            f"  listen: {auth.mqtt_listen}",
            # An MQTT client without credentials is this user, whom the callout refuses.
            f"  no_auth_user: {ANONYMOUS_USER}",
            *(tls_block(*auth.mqtt_tls, auth.mqtt_device_ca, indent="  ") if auth.mqtt_tls else []),
            "}",
            "accounts {",
            f"  {SERVICE_ACCOUNT} {{",
            "    jetstream: enabled",
            "    users: [",
            ",\n".join(f"      {entry}" for entry in entries),
            "    ]",
            *([f"    imports: [ {', '.join(auth.linked.imports)} ]"] if auth.linked.imports else []),
            "  }",
            *callout_account,
            *(f"  {account}" for account in auth.linked.accounts),
            f"  {SYSTEM_ACCOUNT} {{{system_users} }}",
            "}",
            f"system_account: {SYSTEM_ACCOUNT}",
            "authorization {",
            "  auth_callout {",
            f"    issuer: {auth.issuer}",
            f"    auth_users: [ {', '.join(auth.callout_bypass)} ]",
            f"    account: {auth.callout_account}",
            "  }",
            "}",
            "",
        ]
    )
