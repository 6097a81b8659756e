"""Finding the records a store refuses, so that one bad record costs no other record its place in the store.

A store takes or refuses a write as a whole (one SQLite transaction; one failed statement fails the Cassandra
write), so one record it cannot hold fails every record written with it. After a refusal the write is split in
halves and each half written again, down to one message and, inside a message, one record: every good record is
stored and the refused ones remain, each with the store's reason. A write costs one store call as long as
nothing is refused; a refused record costs about two writes per halving.

An outage stops the search: what was not stored yet is reported unwritten, to be retried as a whole later."""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class Part(Generic[R]):
    """The records of one message of a fetched batch, all of them or a share of them after a split."""

    index: int  # the message's position in the batch
    record: R
    late: bool = False  # readings that arrived after their window closed


@dataclass(frozen=True)
class WriteError:
    """Why a store write failed: an outage (`outage`) or a refusal of some record written."""

    outage: bool
    kind: str  # a metric label: "unavailable", or the class of the error the store refused with
    message: str


Write = Callable[[Sequence[Part[R]]], Awaitable[WriteError | None]]
# Two halves of a message's records (a ReadingBatch's readings), or None when it holds one record.
Split = Callable[[R], tuple[R, R] | None]


@dataclass
class Isolation(Generic[R]):
    stored: list[Part[R]] = field(default_factory=list)
    refused: list[tuple[Part[R], WriteError]] = field(default_factory=list)
    unwritten: list[Part[R]] = field(default_factory=list)  # not stored: an outage stopped the search
    outage: WriteError | None = None


async def isolate(parts: Sequence[Part[R]], refusal: WriteError, write: Write[R], split: Split[R]) -> Isolation[R]:
    """Store every record of `parts` (refused as a whole with `refusal`) the store takes; name those it refuses."""
    result: Isolation[R] = Isolation()
    await _search(list(parts), refusal, write, split, result)
    return result


async def _search(
    parts: list[Part[R]], refusal: WriteError, write: Write[R], split: Split[R], result: Isolation[R]
) -> None:
    halves = _halves(parts, split)
    if halves is None:
        result.refused.append((parts[0], refusal))
        return
    for half in halves:
        if result.outage is not None:
            result.unwritten.extend(half)
            continue
        error = await write(half)
        if error is None:
            result.stored.extend(half)
        elif error.outage:
            result.outage = error
            result.unwritten.extend(half)
        else:
            await _search(half, error, write, split, result)


def _halves(parts: list[Part[R]], split: Split[R]) -> tuple[list[Part[R]], list[Part[R]]] | None:
    """Halves of the messages; of one message's records when only one is left; None for a single record."""
    if len(parts) > 1:
        middle = len(parts) // 2
        return parts[:middle], parts[middle:]
    part = parts[0]
    shares = split(part.record)
    if shares is None:
        return None
    first, second = shares
    return [Part(part.index, first, part.late)], [Part(part.index, second, part.late)]
