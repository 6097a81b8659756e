"""What a local data dir says about the platform `fleetflow up` ran there: its fleets, endpoints and stores.

`fleetflow up` creates `secrets/<fleet>.key` for every fleet it runs (kept), writes `pipelines.json` (kept after
a stop, so `fleetflow query` finds the stores) and `endpoints.json` (removed at the stop: it is there only while
the platform runs)."""

import json
from pathlib import Path
from typing import Any

from fleetflow.cli.errors import Unavailable, UsageError
from fleetflow.runtime import credentials


def _json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot read {path}: {exc}; run `fleetflow up` again to rewrite it") from None


def known_fleets(data_dir: Path) -> list[str]:
    """Fleets that have run with this data dir, or whose secret was put there (e.g. copied from a cluster)."""
    fleets = {path.stem for path in (data_dir / "secrets").glob("*.key")}
    pipelines = data_dir / "pipelines.json"
    if pipelines.exists():
        fleets.update(str(entry["fleet"]) for entry in _json(pipelines).values())
    return sorted(fleets)


def _fleet_list(fleets: list[str]) -> str:
    return f"known here: {', '.join(fleets)}" if fleets else "none has run here yet"


def require_data_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise UsageError(f"data dir {data_dir} does not exist; give the --data-dir that `fleetflow up` used")


def require_fleet(data_dir: Path, fleet: str) -> None:
    """UsageError naming the fleets this data dir knows when `fleet` is not one of them."""
    require_data_dir(data_dir)
    fleets = known_fleets(data_dir)
    if fleet not in fleets:
        raise UsageError(f"no fleet {fleet!r} in data dir {data_dir} ({_fleet_list(fleets)})")


def has_secret(data_dir: Path, fleet: str) -> bool:
    return credentials.local_secret_path(data_dir, fleet).exists()


def endpoints(data_dir: Path) -> dict[str, Any]:
    """endpoints.json of the running platform; Unavailable when nothing runs with this data dir."""
    require_data_dir(data_dir)
    path = data_dir / "endpoints.json"
    if not path.exists():
        raise Unavailable(
            f"the local platform is not running with data dir {data_dir} ({path} is missing); "
            f"start it with `fleetflow up PATH --data-dir {data_dir}`"
        )
    return _json(path)


def running_fleet(data_dir: Path, fleet: str) -> dict[str, Any]:
    """The running fleet's entry of endpoints.json (http, grpc, mqtt, secretFile)."""
    fleets: dict[str, Any] = endpoints(data_dir)["fleets"]
    if fleet not in fleets:
        raise UsageError(f"no fleet {fleet!r} runs with data dir {data_dir} (running: {', '.join(sorted(fleets))})")
    return dict(fleets[fleet])


def nats_url(data_dir: Path) -> str:
    return str(endpoints(data_dir)["nats"]["url"])


def pipelines(data_dir: Path) -> dict[str, Any]:
    """pipelines.json: per pipeline its fleet, sink and SQLite path, as the last `fleetflow up` ran them."""
    require_data_dir(data_dir)
    path = data_dir / "pipelines.json"
    if not path.exists():
        raise UsageError(f"no pipeline has run with data dir {data_dir} ({path} is missing): run `fleetflow up` first")
    return _json(path)
