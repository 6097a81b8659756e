"""The hub's side of edge sites in local mode: each site's leaf-node password, made once per data dir in a file of
its own (mode 0600) that the site's operator copies to the site and gives to `fleetflow edge up --credentials`.
Revoking a site: `fleetflow edge revoke` marks it (revoke_site); the hub drops its user at once if it runs (a
reload, no restart), else at its next start (docs/edge.md)."""

from pathlib import Path

from fleetflow.api import DeviceFleet
from fleetflow.local import private
from fleetflow.runtime import edgelink, natsauth
from fleetflow.runtime.natsauth import LinkedAccounts


def site_password_file(data_dir: Path, fleet: str, site: str) -> Path:
    return data_dir / "secrets" / "sites" / f"{edgelink.site_domain(fleet, site)}.password"


def revoked_file(data_dir: Path, fleet: str, site: str) -> Path:
    return data_dir / "secrets" / "sites" / f"{edgelink.site_domain(fleet, site)}.revoked"


def revoke_site(data_dir: Path, fleet: str, site: str) -> Path:
    """Mark the site revoked and forget its password; the hub's `fleetflow up` applies it within a second if it
    runs (SiteLinks), else at its next start. Returns the marker, whose removal readmits the site (a new password)."""
    marker = revoked_file(data_dir, fleet, site)
    private.make_dirs(marker.parent)
    if not marker.exists():
        private.create_private(marker, b"revoked by fleetflow edge revoke\n")
    site_password_file(data_dir, fleet, site).unlink(missing_ok=True)
    return marker


def revocations(data_dir: Path) -> frozenset[str]:
    """The revoked sites' users (domains): what the hub's watch compares to know when to reload."""
    return frozenset(path.stem for path in (data_dir / "secrets" / "sites").glob("*.revoked"))


def ensure_site_passwords(data_dir: Path, fleets: list[DeviceFleet]) -> dict[str, str]:
    """Every declared site's leaf-node password by its user (the site's domain), each made on first use. A revoked
    site keeps its user with a fresh password written nowhere, so no one logs in as it: nats-server cannot reload a
    change of the users the auth callout lets through, so the list of users stays the same."""
    passwords = {}
    for fleet in fleets:
        for site in fleet.spec.sites:
            if revoked_file(data_dir, fleet.name, site.name).exists():
                passwords[edgelink.site_domain(fleet.name, site.name)] = natsauth.new_password()
                continue
            path = site_password_file(data_dir, fleet.name, site.name)
            if not path.exists():
                private.make_dirs(path.parent)
                private.create_private(path, f"{natsauth.new_password()}\n".encode())
            passwords[edgelink.site_domain(fleet.name, site.name)] = path.read_text().strip()
    return passwords


def read_site_password(path: Path) -> str:
    """The password in a `--credentials` file; ValueError naming the file and what it must hold."""
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--credentials {str(path)!r}: cannot read it ({exc.strerror})") from None
    if not password or not password.isalnum():
        raise ValueError(
            f"--credentials {str(path)!r}: it must hold the site's password only (letters and digits), as the hub's "
            "`fleetflow up` wrote it to <data-dir>/secrets/sites/<fleet>-<site>.password"
        )
    return password


def hub_leafnodes(data_dir: Path, fleets: list[DeviceFleet], host: str, port: int,
                  tls: tuple[Path, Path] | None = None) -> tuple[str, LinkedAccounts]:  # fmt: skip
    """The hub's leaf-node listener for every declared site (over TLS with `tls`: certificate and key files), and
    the sites' accounts."""
    passwords = ensure_site_passwords(data_dir, fleets).items()
    accounts = edgelink.hub_site_accounts({user: natsauth.quoted(password) for user, password in passwords})
    tls_files = (str(tls[0]), str(tls[1])) if tls else None
    return edgelink.hub_leafnodes_config(host, port, tls_files), accounts
