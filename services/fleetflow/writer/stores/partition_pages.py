"""Pages of rows read partition after partition, resumable from a token.

A query over a time range reads several partitions (one per bucket, or per group and bucket) in page order.
A token names the partition to resume in and the driver's paging state within it; the state is opaque
bytes to this module, which only hands it back to `fetch`. Kept apart from the driver so the resume logic
is tested without a server."""

import base64
import binascii
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fleetflow.writer.stores.base import Page
from fleetflow.writer.stores.paging import decode_token, encode_token

T = TypeVar("T")


@dataclass(frozen=True)
class Partition:
    """One partition to read: its position in page order (`key`) and the values that bind its key."""

    key: tuple[Any, ...]
    params: tuple[Any, ...]


# Rows of `partition` after `state` (None: from the start), at most `size`; and the state after them, or None
# when the partition is exhausted.
Fetch = Callable[[Partition, int, bytes | None], Awaitable[tuple[list[T], bytes | None]]]


def make_token(key: tuple[Any, ...], state: bytes | None) -> str:
    return encode_token([*key, base64.urlsafe_b64encode(state).decode() if state is not None else None])


def parse_token(token: str, key_arity: int) -> tuple[tuple[Any, ...], bytes | None]:
    """(partition key, paging state) of a token; ValueError naming the token if this store did not issue it."""
    position = decode_token(token, key_arity + 1)
    state = position[-1]
    if state is None:
        return tuple(position[:-1]), None
    try:
        return tuple(position[:-1]), base64.urlsafe_b64decode(str(state).encode())
    except (ValueError, binascii.Error):
        raise ValueError(f"page token {token!r} is not one this store issued; omit it to start over") from None


def before(key: tuple[Any, ...], resume: tuple[Any, ...], descending: bool) -> bool:
    """Whether `key` comes before `resume` in page order (and so was read by earlier pages)."""
    return key > resume if descending else key < resume


async def from_list(partitions: Iterable[Partition]) -> AsyncIterator[Partition]:
    for partition in partitions:
        yield partition


async def read_page(
    partitions: AsyncIterator[Partition],
    fetch: Fetch[T],
    limit: int,
    token: str | None,
    key_arity: int,
    descending: bool,
    keep: Callable[[T], bool] = lambda _: True,
) -> Page[T]:
    """Up to `limit` rows (those `keep` accepts), reading partitions in order from where `token` left off.

    Each fetch asks for no more rows than the page still needs, so every fetched row is returned or
    filtered out and the paging state is exactly where the next page starts. A partition named by a token
    but gone since (expired) is skipped: the next one in order is read from its beginning."""
    resume, state = parse_token(token, key_arity) if token is not None else (None, None)
    items: list[T] = []
    async for partition in partitions:
        if resume is not None:
            if before(partition.key, resume, descending):
                continue
            if partition.key != resume:
                state = None
            resume = None
        if len(items) >= limit:
            return Page(items, make_token(partition.key, None))
        while True:
            rows, state = await fetch(partition, limit - len(items), state)
            items.extend(row for row in rows if keep(row))
            if state is None:
                break
            if len(items) >= limit:
                return Page(items, make_token(partition.key, state))
    return Page(items, None)
