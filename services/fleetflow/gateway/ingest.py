"""Turning a device's request body into a validated ReadingBatch, or a Rejection that says what is wrong."""

import itertools
import re

from fleetflow.api import DeviceFleet
from fleetflow.api.identifiers import DEVICE_ID_RULE, is_device_id
from fleetflow.gateway.errors import Rejection
from fleetflow.runtime import codec
from fleetflow.runtime.codec import CodecError, Reading, ReadingBatch


class BatchValidator:
    """Validates request bodies against one fleet's limits.

    Types, ranges and metric names are checked by the codec while decoding; what is left here is the
    order of seq and turning RFC 3339 timestamps into epoch milliseconds."""

    def __init__(self, fleet: DeviceFleet):
        self.fleet = fleet.name
        self.max_readings = fleet.spec.gateway.max_batch_readings
        self._known_metrics: set[str] = set()

    def validate(self, device: str, body: bytes, received_ms: int) -> ReadingBatch:
        try:
            request = codec.decode_request(body)
            codec.check_metric_names(request.readings, self._known_metrics)
            readings = [
                Reading(r.seq, r.ts, r.metrics) if type(r.ts) is int
                else Reading(r.seq, codec.parse_rfc3339(r.ts, f"readings[{i}]"), r.metrics)  # type: ignore[arg-type]
                for i, r in enumerate(request.readings)
            ]  # fmt: skip
        except CodecError as exc:
            raise Rejection(400, exc.reason, exc.detail) from None
        self._check_size(len(readings))
        self._check_order(readings)
        return ReadingBatch(fleet=self.fleet, device=device, readings=readings, received_ms=received_ms)

    def _check_size(self, count: int) -> None:
        if count == 0:
            raise Rejection(400, "empty_batch", f"readings is empty; send between 1 and {self.max_readings} readings")
        if count > self.max_readings:
            raise Rejection(
                413,
                "batch_too_large",
                f"{count} readings in one request; at most {self.max_readings} accepted",
            )

    @staticmethod
    def _check_order(readings: list[Reading]) -> None:
        for before, after in itertools.pairwise(readings):
            if after.seq <= before.seq:
                raise Rejection(
                    400,
                    "seq_not_increasing",
                    f"seq {after.seq} follows seq {before.seq}; seq must increase within a batch",
                )


def check_device_id(fleet: DeviceFleet, device: str, id_pattern: re.Pattern[str]) -> None:
    if not is_device_id(device):
        raise Rejection(400, "invalid_device_id", f"device id {device!r} is not valid: use {DEVICE_ID_RULE}")
    if not id_pattern.search(device):
        raise Rejection(
            400,
            "invalid_device_id",
            f"device id {device!r} does not match fleet {fleet.name}'s idPattern {id_pattern.pattern!r}",
        )
