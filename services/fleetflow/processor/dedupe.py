"""Dropping readings whose (device, seq) was already seen, e.g. a device retrying with a different batching."""

import msgspec

PRUNE_EVERY = 1024


class SeenSeqs(msgspec.Struct):
    """One device's recently seen sequence numbers with their event times."""

    newest_ts: int = -(2**62)
    seqs: dict[int, int] = msgspec.field(default_factory=dict)


def first_time(seen: SeenSeqs, seq: int, ts: int, horizon_ms: int) -> bool:
    """True if `seq` is new for the device (and remember it); False for a duplicate."""
    if seq in seen.seqs:
        return False
    seen.seqs[seq] = ts
    seen.newest_ts = max(seen.newest_ts, ts)
    if len(seen.seqs) % PRUNE_EVERY == 0:
        cutoff = seen.newest_ts - horizon_ms
        seen.seqs = {s: t for s, t in seen.seqs.items() if t >= cutoff}
    return True
