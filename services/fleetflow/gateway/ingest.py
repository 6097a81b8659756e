"""Turning a device's request body into a validated ReadingBatch, or a Rejection that says what is wrong."""

import itertools
import re

from fleetflow.api import DeviceFleet
from fleetflow.api.identifiers import DEVICE_ID, DEVICE_ID_RULE, METRIC_NAME, METRIC_NAME_RULE
from fleetflow.gateway.errors import Rejection
from fleetflow.runtime import codec
from fleetflow.runtime.codec import CodecError, Reading, ReadingBatch


class BatchValidator:
    """Validates request bodies against one fleet's limits. Metric names seen once are remembered as valid."""

    def __init__(self, fleet: DeviceFleet):
        self.fleet = fleet.name
        self.max_readings = fleet.spec.gateway.max_batch_readings
        self._known_metrics: set[str] = set()

    def validate(self, device: str, body: bytes, received_ms: int) -> ReadingBatch:
        try:
            request = codec.decode_request(body)
            readings = [self._reading(i, raw) for i, raw in enumerate(request.readings)]
        except CodecError as exc:
            raise Rejection(400, exc.reason, exc.detail) from None
        self._check_size(len(readings))
        self._check_order(readings)
        return ReadingBatch(fleet=self.fleet, device=device, readings=readings, received_ms=received_ms)

    def _reading(self, index: int, raw: codec.ReadingIn) -> Reading:
        where = f"readings[{index}]"
        if raw.seq < 0:
            raise CodecError("invalid_reading", f"{where}.seq is {raw.seq}; seq must be an integer >= 0")
        codec.check_finite(raw.metrics, where)
        self._check_metric_names(raw.metrics, where)
        return Reading(seq=raw.seq, ts=codec.parse_ts(raw.ts, where), metrics=raw.metrics)

    def _check_metric_names(self, metrics: dict[str, float], where: str) -> None:
        if not metrics:
            raise CodecError("invalid_reading", f"{where}.metrics is empty; send at least one metric")
        for name in metrics:
            if name in self._known_metrics:
                continue
            if not METRIC_NAME.match(name):
                raise CodecError("invalid_metric_name", f"{where}.metrics name {name!r}: use {METRIC_NAME_RULE}")
            if len(self._known_metrics) < 100_000:
                self._known_metrics.add(name)

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
    if not DEVICE_ID.match(device):
        raise Rejection(400, "invalid_device_id", f"device id {device!r} is not valid: use {DEVICE_ID_RULE}")
    if not id_pattern.search(device):
        raise Rejection(
            400,
            "invalid_device_id",
            f"device id {device!r} does not match fleet {fleet.name}'s idPattern {id_pattern.pattern!r}",
        )
