"""Commands to devices, as the gateway delivers them and the application API sends and shows them: the durable
command stream, each command's state with its history, delivery claims.

A command is one message on `ff.<fleet>.cmd.<device>` in the fleet's command stream (its id is the
Nats-Msg-Id, so a resend is a duplicate JetStream drops). Its state lives in the JetStream key-value bucket
`ff-<fleet>-command-state` under `<device>.<id>`: the current state plus every transition with its time.
Transitions are compare-and-set on the entry's revision, so several gateway replicas (or a device that
reconnects over another protocol) can never deliver the same command twice.

    queued ──▶ delivered ──▶ succeeded | failed | rejected
       │└─────▶ expired (the TTL passed before a device took it)
       └──▶ forwarded (to the edge site the device is at; the site's states follow: docs/edge.md)

(An MQTT delivery that provably reached no subscriber goes back from delivered to queued; see mqtt_bridge.)
"""

import asyncio
import contextlib
import hashlib
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from fleetflow.runtime import subjects
from fleetflow.runtime.codec import Command

QUEUED, FORWARDED, DELIVERED, EXPIRED = "queued", "forwarded", "delivered", "expired"
RESULTS = ("succeeded", "failed", "rejected")
STATES = (QUEUED, FORWARDED, DELIVERED, *RESULTS, EXPIRED)
TERMINAL = frozenset((*RESULTS, EXPIRED))

COMMAND_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
COMMAND_NAME_RULE = "a letter, then up to 63 letters, digits, '_', '.' or '-'"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_=-]{1,100}$")
MAX_TTL_MS = 7 * 24 * 3600 * 1000
LIST_BATCH = 1000  # state records per fetch when listing
DEFAULT_TTL_MS = 3600 * 1000
# Every protocol must carry params: protobuf's Struct stops at 100 levels (a gRPC device would never get the
# command), and the size keeps one command from filling a device's or the stream's buffers.
MAX_PARAMS_DEPTH = 32
MAX_PARAMS_BYTES = 64 * 1024


def now_ms() -> int:
    return int(time.time() * 1000)


class CommandError(ValueError):
    """A command request that cannot be honoured; `status` is the HTTP status that says why."""

    def __init__(self, status: int, reason: str, detail: str):
        self.status, self.reason, self.detail = status, reason, detail
        super().__init__(detail)


class Transition(msgspec.Struct, kw_only=True):
    state: str
    at_ms: int
    detail: str = ""


class CommandRecord(msgspec.Struct, kw_only=True):
    """A command with its current state and every state it went through, oldest first."""

    command: Command
    state: str
    history: list[Transition]
    revision: int = 0  # of the key-value entry this was read from; not stored

    @property
    def expires_ms(self) -> int:
        return self.command.created_ms + self.command.ttl_ms

    def moved_to(self, state: str, at_ms: int, detail: str = "") -> "CommandRecord":
        return CommandRecord(
            command=self.command, state=state, history=[*self.history, Transition(state=state, at_ms=at_ms,
                                                                                  detail=detail)]
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The application's view: camelCase, as the HTTP API and `fleetflow command show` print it."""
        cmd = self.command
        return {
            "id": cmd.id,
            "fleet": cmd.fleet,
            "device": cmd.device,
            "name": cmd.name,
            "params": cmd.params,
            "source": cmd.source,
            "createdMs": cmd.created_ms,
            "ttlMs": cmd.ttl_ms,
            "expiresMs": self.expires_ms,
            "state": self.state,
            "history": [{"state": t.state, "atMs": t.at_ms, "detail": t.detail} for t in self.history],
        }


def device_view(command: Command) -> dict[str, Any]:
    """What a device receives, over any protocol."""
    return {
        "id": command.id,
        "name": command.name,
        "params": command.params,
        "createdMs": command.created_ms,
        "expiresMs": command.created_ms + command.ttl_ms,
    }


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(CommandRecord)
_command_decoder = msgspec.json.Decoder(Command)


async def follow_commands(
    js: JetStreamContext,
    fleet: str,
    on_command: Callable[[Command], Awaitable[None]],
    every_tick: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    tick: float,
) -> None:
    """Hand every command of the fleet's command stream, from its first, to `on_command` (one that does not
    decode is skipped), and run `every_tick` every `tick` seconds, until `stop` is set."""

    async def received(msg: Any) -> None:
        try:
            command = _command_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        await on_command(command)

    sub = await js.subscribe(
        f"ff.{fleet}.cmd.>", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL, cb=received,
        stream=subjects.commands_stream(fleet),
    )  # fmt: skip
    try:
        while not stop.is_set():
            await every_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick)
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await sub.unsubscribe()


def state_bucket(fleet: str) -> str:
    return subjects.command_state_bucket(fleet)


def record_key(device: str, command_id: str) -> str:
    """`<device>.<id>`; ids with characters a key cannot hold are replaced by a digest of themselves."""
    if _SAFE_KEY.fullmatch(command_id):
        return f"{device}.{command_id}"
    return f"{device}.h{hashlib.sha256(command_id.encode()).hexdigest()[:40]}"


_sequence = itertools.count()


def _ordered_id(created_ms: int) -> str:
    """32 hex digits that sort as the commands were created (as a UUIDv7 does): the creation time, a counter of
    this process, then 64 random bits. Lists sort by (created_ms, id), so two commands sent within the same
    millisecond keep their order."""
    return f"{created_ms:012x}{next(_sequence) % 0x10000:04x}{secrets.randbits(64):016x}"


def new_command(
    fleet: str,
    device: str,
    name: str,
    params: dict[str, Any] | None = None,
    ttl_ms: int = DEFAULT_TTL_MS,
    source: str = "api",
    command_id: str | None = None,
) -> Command:
    """A validated command; CommandError says which field is wrong and what is accepted."""
    if not COMMAND_NAME.fullmatch(name):
        raise CommandError(400, "invalid_command", f"command name {name!r} is not valid: use {COMMAND_NAME_RULE}")
    if not 1000 <= ttl_ms <= MAX_TTL_MS:
        raise CommandError(400, "invalid_command", f"ttl of {ttl_ms} ms is out of range: use 1 s to 7 days")
    if command_id is not None and not _SAFE_KEY.fullmatch(command_id):
        raise CommandError(400, "invalid_command", f"command id {command_id!r} is not valid: use 1 to 100 "
                           "letters, digits, '_', '=' or '-'")  # fmt: skip
    values = params or {}
    check_params(values)
    created_ms = now_ms()
    return Command(
        id=command_id or _ordered_id(created_ms),
        fleet=fleet,
        device=device,
        name=name,
        params=values,
        created_ms=created_ms,
        ttl_ms=ttl_ms,
        source=source,
    )


class SendRequest(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    """The JSON body an application sends a command with, to the gateway's command API or the application API."""

    name: str
    params: dict[str, Any] = {}  # any JSON values, nested too (depth and size: check_params)
    ttl_seconds: float = DEFAULT_TTL_MS / 1000
    id: str | None = None

    def to_command(self, fleet: str, device: str, source: str) -> Command:
        """The validated command; CommandError names the field that is wrong and what is accepted."""
        if not 1 <= self.ttl_seconds <= MAX_TTL_MS / 1000:  # also NaN; before int(), which inf would overflow
            raise CommandError(400, "invalid_command", f"ttlSeconds {self.ttl_seconds} is out of range: use 1 to "
                               f"{MAX_TTL_MS // 1000} (7 days)")  # fmt: skip
        return new_command(fleet, device, self.name, dict(self.params), int(self.ttl_seconds * 1000), source=source,
                           command_id=self.id)  # fmt: skip


def check_params(values: dict[str, Any]) -> None:
    """Params every protocol can carry: JSON values, at most MAX_PARAMS_DEPTH deep and MAX_PARAMS_BYTES long."""
    depth = _depth(values)
    if depth > MAX_PARAMS_DEPTH:
        raise CommandError(400, "invalid_command", f"params are nested {depth} levels deep; at most "
                           f"{MAX_PARAMS_DEPTH} are accepted")  # fmt: skip
    try:
        size = len(msgspec.json.encode(values))
    except (TypeError, msgspec.EncodeError) as exc:  # e.g. a set or bytes from a Python caller
        raise CommandError(400, "invalid_command", f"params must be JSON values (nested ones too): {exc}") from None
    if size > MAX_PARAMS_BYTES:
        raise CommandError(400, "invalid_command", f"params are {size} bytes as JSON; at most {MAX_PARAMS_BYTES} "
                           "are accepted")  # fmt: skip


def _depth(value: Any, level: int = 1) -> int:
    """Nesting depth of objects and lists (1 for a flat object); stops counting past the limit."""
    if level > MAX_PARAMS_DEPTH or not isinstance(value, dict | list):
        return level if isinstance(value, dict | list) else level - 1
    children = value.values() if isinstance(value, dict) else value
    return max((_depth(child, level + 1) for child in children), default=level)


class CommandStore:
    """Commands' state records in the fleet's key-value bucket."""

    def __init__(self, kv: KeyValue, fleet: str, js: JetStreamContext):
        self.kv, self.fleet, self.js = kv, fleet, js

    @classmethod
    async def open(cls, js: JetStreamContext, fleet: str) -> "CommandStore":
        """The fleet's state bucket, created on first use (records stay as long as the commands stream).

        Reads are direct gets: a claim per delivered command through the JetStream API queue (STREAM.MSG.GET)
        stalled ten thousand devices' commands for seconds and timed some out. A direct get answered by a
        lagging replica can only make a compare-and-set write fail, and the writer then reads again."""
        bucket = state_bucket(fleet)
        try:
            await _allow_direct_get(js, bucket)
            kv = await js.key_value(bucket)
        except (NotFoundError, BadRequestError):
            config = KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE, ttl=MAX_TTL_MS / 1000 * 2,
                                    direct=True,
                                    description=f"State of the commands to devices of fleet {fleet}")  # fmt: skip
            kv = await js.create_key_value(config)
        return cls(kv, fleet, js)

    async def get(self, device: str, command_id: str) -> CommandRecord | None:
        try:
            entry = await self.kv.get(record_key(device, command_id))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.value is None:
            return None
        record = _record_decoder.decode(entry.value)
        record.revision = entry.revision or 0
        return record

    async def ensure_queued(self, command: Command) -> CommandRecord:
        """The command's record, created as `queued` at its creation time if it has none yet."""
        record = CommandRecord(
            command=command, state=QUEUED, history=[Transition(state=QUEUED, at_ms=command.created_ms)]
        )
        try:
            record.revision = await self.kv.create(record_key(command.device, command.id), encode_record(record))
            return record
        except KeyWrongLastSequenceError:
            existing = await self.get(command.device, command.id)
            if existing is None:  # deleted between the two calls; extremely rare, try once more
                return await self.ensure_queued(command)
            return existing

    async def transition(
        self, device: str, command_id: str, to_state: str, allowed_from: frozenset[str], detail: str = "",
        at_ms: int | None = None,
    ) -> CommandRecord:  # fmt: skip
        """Move the command to `to_state` if it is in one of `allowed_from`, atomically; CommandError if not."""
        while True:
            record = await self.get(device, command_id)
            if record is None:
                raise CommandError(404, "unknown_command", f"no command {command_id!r} for device {device!r}")
            if record.state not in allowed_from:
                raise CommandError(409, "state_conflict", f"command {command_id!r} is {record.state}; it can "
                                   f"become {to_state} only from {' or '.join(sorted(allowed_from))}")  # fmt: skip
            moved = record.moved_to(to_state, at_ms if at_ms is not None else now_ms(), detail)
            try:
                moved.revision = await self.kv.update(
                    record_key(device, command_id), encode_record(moved), record.revision
                )
                return moved
            except KeyWrongLastSequenceError:
                continue  # someone else moved it meanwhile: look again

    async def replace(self, current: CommandRecord, new: CommandRecord) -> bool:
        """Write `new` in place of `current` if nobody changed the record since `current` was read (compare-and-set
        on its revision); False if someone did. For a record that copies another's steps (an edge site's)."""
        try:
            await self.kv.update(record_key(new.command.device, new.command.id), encode_record(new), current.revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def claim(self, command: Command, protocol: str) -> CommandRecord | None:
        """Take a queued command for delivery: returns it as `delivered`, or None if it is not deliverable
        (already delivered or finished, or expired — which this records).

        One read and one compare-and-set write: an update of the record from the revision read, or, for a
        command nobody recorded yet (the processor publishes to the stream only), its creation as delivered
        with the queued state it had first. Whoever writes second fails and looks again."""
        record = await self.get(command.device, command.id)
        if record is not None and record.state != QUEUED:
            return None
        if now_ms() >= command.created_ms + command.ttl_ms:
            if record is None:
                await self.ensure_queued(command)
            await self.expire(command)
            return None
        first = record or CommandRecord(command=command, state=QUEUED,
                                        history=[Transition(state=QUEUED, at_ms=command.created_ms)])  # fmt: skip
        delivered = first.moved_to(DELIVERED, now_ms(), f"via {protocol}")
        key = record_key(command.device, command.id)
        try:
            if record is None:
                delivered.revision = await self.kv.create(key, encode_record(delivered))
            else:
                delivered.revision = await self.kv.update(key, encode_record(delivered), record.revision)
        except KeyWrongLastSequenceError:
            return await self.claim(command, protocol)  # it moved meanwhile (most likely: delivered elsewhere)
        return delivered

    async def expire(self, command: Command) -> bool:
        """Record that the TTL passed (at the moment it did); False if the command had left `queued` first."""
        try:
            await self.transition(command.device, command.id, EXPIRED, frozenset({QUEUED}), "ttl passed",
                                  at_ms=command.created_ms + command.ttl_ms)  # fmt: skip
        except CommandError:
            return False
        return True

    async def requeue(self, command: Command, detail: str) -> bool:
        """Undo a delivery that provably reached nobody (the device had vanished); False if it moved on."""
        try:
            await self.transition(command.device, command.id, QUEUED, frozenset({DELIVERED}), detail)
        except CommandError:
            return False
        return True

    async def report(self, device: str, command_id: str, status: str, detail: str = "") -> CommandRecord:
        """A device's result. Reporting the same result again is accepted and changes nothing."""
        if status not in RESULTS:
            raise CommandError(400, "invalid_result", f"status {status!r} is not a result: use one of "
                               f"{', '.join(RESULTS)}")  # fmt: skip
        try:
            return await self.transition(device, command_id, status, frozenset({DELIVERED}), detail[:1000])
        except CommandError as exc:
            record = await self.get(device, command_id)
            if exc.status == 409 and record is not None and record.state == status:
                return record
            raise

    async def list(self, device: str | None = None, state: str | None = None) -> list[CommandRecord]:
        """Records of one device (or of the fleet), oldest first, optionally only those in `state`.

        Read through a throwaway pull consumer of each key's newest entry, as many entries as it counted when it
        was made. (Not a key watch: nats-py's watcher can signal "no entries" before one already on its way
        arrives, which left a device's only command, just sent, out of its list.)"""
        bucket = state_bucket(self.fleet)
        stream, consumer = f"KV_{bucket}", secrets.token_hex(8)
        config = ConsumerConfig(name=consumer, deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                                ack_policy=AckPolicy.NONE, mem_storage=True, inactive_threshold=60.0,
                                filter_subject=f"$KV.{bucket}.{device}.>" if device else f"$KV.{bucket}.>")  # fmt: skip
        info = await self.js.add_consumer(stream, config)
        try:
            sub = await self.js.pull_subscribe_bind(consumer, stream)
            try:
                records = await _fetch_counted(sub, info.num_pending or 0)
            finally:
                await sub.unsubscribe()
        finally:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(stream, consumer)
        return sorted((r for r in records if state is None or r.state == state),
                      key=lambda r: (r.command.created_ms, r.command.id))  # fmt: skip

    async def find(self, command_id: str) -> CommandRecord | None:
        """A command by id alone, whichever device it is for: the newest entry of `*.<id>` in the bucket's stream.
        (Not a key watch: nats-py's watcher can signal "no entries" before one already on its way arrives, which
        made a command just sent look unknown.)"""
        probe = record_key("x", command_id).split(".", 1)[1]
        bucket = state_bucket(self.fleet)
        try:
            msg = await self.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.*.{probe}")
        except NotFoundError:
            return None
        return _live_record(msg.headers, msg.data, msg.seq or 0)


async def _fetch_counted(sub: JetStreamContext.PullSubscription, count: int) -> list[CommandRecord]:
    """The records among the first `count` entries a list's consumer delivers; fewer if some expired meanwhile."""
    records: list[CommandRecord] = []
    while count > 0:
        try:
            batch = await sub.fetch(min(count, LIST_BATCH), timeout=5)
        except (TimeoutError, nats.errors.TimeoutError):  # nats-py raises either
            if (await sub.consumer_info()).num_pending:
                raise
            break  # the rest expired (the bucket's TTL) while the list was read
        count -= len(batch)
        records.extend(
            r for m in batch if (r := _live_record(m.headers, m.data, m.metadata.sequence.stream)) is not None
        )
    return records


def _live_record(headers: dict[str, str] | None, data: bytes | None, revision: int) -> CommandRecord | None:
    """The record a state bucket entry holds; None for a deletion marker."""
    if (headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not data:
        return None
    record = _record_decoder.decode(data)
    record.revision = revision
    return record


async def _allow_direct_get(js: JetStreamContext, bucket: str) -> None:
    """Turn on direct get for a bucket created before the gateway asked for it (NotFoundError: no bucket yet)."""
    info = await js.stream_info(f"KV_{bucket}")
    if not info.config.allow_direct:
        info.config.allow_direct = True
        await js.update_stream(info.config)


def encode_record(record: CommandRecord) -> bytes:
    """The record as the state bucket and the command log hold it."""
    # The revision is where the record was read from, not part of it.
    return _record_encoder.encode(CommandRecord(command=record.command, state=record.state, history=record.history))


async def send_command(js: JetStreamContext, store: CommandStore, command: Command) -> CommandRecord:
    """Publish the command to the durable stream (its id is the dedupe id) and record it as queued."""
    await js.publish(
        subjects.command_subject(command.fleet, command.device),
        msgspec.json.encode(command),
        headers={"Nats-Msg-Id": command.id},
        timeout=5,
    )
    return await store.ensure_queued(command)
