"""Cassandra credentials from a directory: a mounted Kubernetes Secret on a cluster, plain files locally.

The file names are the Secret keys K8ssandra and cert-manager already use, so their Secrets mount as is:
`username` and `password` (K8ssandra's `<cluster>-superuser`), `ca.crt`, `tls.crt` and `tls.key`
(a cert-manager Certificate). `ca.crt` switches TLS on; `tls.crt` + `tls.key` add a client certificate;
`verify_hostname` containing `true` also checks node certificates name the node's address."""

import ssl
from dataclasses import dataclass
from pathlib import Path

from cassandra.auth import PlainTextAuthProvider

USERNAME, PASSWORD = "username", "password"
CA, CERT, KEY, VERIFY_HOSTNAME = "ca.crt", "tls.crt", "tls.key", "verify_hostname"


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = False


def read_credentials(directory: Path | None) -> Credentials:
    """Credentials found in `directory` (none at all when it is None); ValueError naming a bad file."""
    if directory is None:
        return Credentials()
    if not directory.is_dir():
        raise ValueError(f"cassandra credentials dir {directory} does not exist or is not a directory")

    def text(name: str) -> str | None:
        path = directory / name
        return path.read_text().strip() if path.is_file() else None

    def file(name: str) -> Path | None:
        path = directory / name
        return path if path.is_file() else None

    username, password = text(USERNAME), text(PASSWORD)
    if (username is None) != (password is None):
        missing = PASSWORD if password is None else USERNAME
        raise ValueError(f"cassandra credentials dir {directory} has one of username/password but no {missing!r}")
    cert, key = file(CERT), file(KEY)
    if (cert is None) != (key is None):
        raise ValueError(f"cassandra credentials dir {directory} needs both {CERT!r} and {KEY!r} for a client cert")
    ca = file(CA)
    if cert is not None and ca is None:
        raise ValueError(f"cassandra credentials dir {directory} has a client certificate but no {CA!r} to trust")
    verify = (text(VERIFY_HOSTNAME) or "false").lower()
    if verify not in ("true", "false"):
        raise ValueError(f"{directory / VERIFY_HOSTNAME} holds {verify!r}; accepted: true, false")
    return Credentials(username, password, ca, cert, key, verify == "true")


def auth_provider(credentials: Credentials) -> PlainTextAuthProvider | None:
    if credentials.username is None:
        return None
    return PlainTextAuthProvider(username=credentials.username, password=credentials.password)


def ssl_context(credentials: Credentials) -> ssl.SSLContext | None:
    """A client TLS context that always verifies the server's chain against `ca.crt`, or None without TLS."""
    if credentials.ca_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(credentials.ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The driver connects to node IP addresses it learns from system.peers; certificates often name pods or
    # services instead, so hostname checks are opt-in. The chain is verified either way.
    context.check_hostname = credentials.verify_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if credentials.cert_file is not None and credentials.key_file is not None:
        context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))
    return context
