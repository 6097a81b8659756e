"""When the certificates a process serves or verifies with expire, as the gauge
`fleetflow_tls_certificate_expiry_timestamp_seconds{certificate=...}`, so an alert pages before one lapses.

A service records what it loaded at start (its pod rolls when the Secret changes, and the new process records the
new certificate); the operator records what it reads from the fleet's Secrets at every reconcile. The values live
in one table per process, which the gauge reads at each scrape."""

import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from opentelemetry.metrics import CallbackOptions, Meter, Observation

# One series per (labels): the certificate's role plus, in the operator, the fleet and namespace it belongs to.
_Key = frozenset[tuple[str, str]]
_EXPIRIES: dict[_Key, float] = {}
_LOCK = threading.Lock()  # the Prometheus exporter's callback runs in the scraping thread
_REGISTERED: list[Meter] = []  # held, not their ids: a collected meter's id may come again


def not_after(pem: bytes, source: str) -> float:
    """Unix time at which the first certificate in `pem` (a chain or a CA bundle) expires; a chain stops working
    when any of its certificates lapses. ValueError naming `source` when it holds no PEM certificate."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"{source}: not a PEM certificate ({exc})") from None
    return min(certificate.not_valid_after_utc.timestamp() for certificate in certificates)


def record(certificate: str, pem: bytes, source: str, **labels: str) -> float:
    """Export the expiry of `pem` as the certificate `certificate` ("gateway", "nats", "ca"), with `labels`."""
    expiry = not_after(pem, source)
    with _LOCK:
        _EXPIRIES[_key(certificate, labels)] = expiry
    return expiry


def record_file(certificate: str, path: Path, **labels: str) -> float:
    """record() of a PEM file a process loaded; ValueError naming the file when it cannot be read."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the certificate ({exc.strerror})") from None
    return record(certificate, pem, str(path), **labels)


def forget(certificates: Iterable[str] | None = None, **labels: str) -> None:
    """Stop exporting the certificates (all of them, or those named) whose series carry `labels`."""
    wanted = set(labels.items())
    names = None if certificates is None else set(certificates)
    with _LOCK:
        for key in [k for k in _EXPIRIES if wanted <= k]:
            if names is None or dict(key)["certificate"] in names:
                del _EXPIRIES[key]


def expiries() -> dict[_Key, float]:
    with _LOCK:
        return dict(_EXPIRIES)


def register(meter: Meter) -> None:
    """Create the gauge on `meter` (once: an instrument name registers once per meter, with its callback)."""
    if any(registered is meter for registered in _REGISTERED):
        return
    _REGISTERED.append(meter)
    meter.create_observable_gauge(
        "fleetflow_tls_certificate_expiry_timestamp_seconds",
        [_observe],
        unit="s",
        description="When a certificate this process serves or verifies with expires (Unix time), by certificate",
    )


def _observe(_: CallbackOptions) -> list[Observation]:
    return [Observation(expiry, dict(key)) for key, expiry in expiries().items()]


def _key(certificate: str, labels: Mapping[str, str]) -> _Key:
    return frozenset({**labels, "certificate": certificate}.items())
