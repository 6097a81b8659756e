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
