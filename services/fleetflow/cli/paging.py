"""Reading a paged source (a store's pages, the application API's cursors) down to the rows a command prints."""

import heapq
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fleetflow.writer.stores import Page

T = TypeVar("T")
Fetch = Callable[[str | None], Awaitable[Page[T]]]


async def newest(fetch: Fetch[T], key: Callable[[T], int], limit: int) -> list[T]:
    """The `limit` items with the largest `key` over every page, newest first."""
    items: list[T] = []
    token: str | None = None
    while True:
        page = await fetch(token)
        items = heapq.nlargest(limit, [*items, *page.items], key=key)
        token = page.next_page_token
        if token is None:
            return items


async def newest_in_range(fetch: Fetch[T], key: Callable[[T], int], since: int, until: int, limit: int) -> list[T]:
    """Like newest(), of the items whose `key` lies in [since, until): for sources that cannot filter by it."""

    async def in_range(token: str | None) -> Page[T]:
        page = await fetch(token)
        return Page([item for item in page.items if since <= key(item) < until], page.next_page_token)

    return await newest(in_range, key, limit)


async def first(fetch: Fetch[T], limit: int) -> list[T]:
    """The first `limit` items of a source already in the order wanted, following pages until there are enough."""
    items: list[T] = []
    token: str | None = None
    while len(items) < limit:
        page = await fetch(token)
        items += page.items
        token = page.next_page_token
        if token is None:
            break
    return items[:limit]
