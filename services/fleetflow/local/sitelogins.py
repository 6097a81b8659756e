"""The hub's side of edge sites in local mode: each site's leaf-node password, made once per data dir in a file of
its own (mode 0600) that the site's operator copies to the site and gives to `fleetflow edge up --credentials`.
Revoking a site: remove it from spec.sites (or delete its file, which makes a new password) and restart."""

from pathlib import Path

from fleetflow.api import DeviceFleet
from fleetflow.local import private
from fleetflow.runtime import edgelink, natsauth


def site_password_file(data_dir: Path, fleet: str, site: str) -> Path:
    return data_dir / "secrets" / "sites" / f"{edgelink.site_domain(fleet, site)}.password"


def ensure_site_passwords(data_dir: Path, fleets: list[DeviceFleet]) -> dict[str, str]:
    """Every declared site's leaf-node password by its user (the site's domain), each made on first use."""
    passwords = {}
    for fleet in fleets:
        for site in fleet.spec.sites:
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


def hub_leafnodes(data_dir: Path, fleets: list[DeviceFleet], host: str, port: int) -> str:
    """The hub's leaf-node listener for every declared site."""
    users = {user: natsauth.quoted(pw) for user, pw in ensure_site_passwords(data_dir, fleets).items()}
    return edgelink.hub_leafnodes_config(host, port, users, natsauth.SERVICE_ACCOUNT)
