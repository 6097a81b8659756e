"""Paging across partitions, the logic the Cassandra store reads with, over in-memory partitions that page
the way the driver does (including its habit of returning a paging state for a page that was exactly full)."""

import pytest

from fleetflow.writer.stores.partition_pages import Partition, from_list, make_token, read_page

# Three buckets of readings, newest bucket first, rows newest first within each: (bucket, seq).
DATA = {300: [(300, s) for s in (9, 8, 7, 6)], 200: [(200, s) for s in (5, 4, 3)], 100: [(100, s) for s in (2, 1)]}
ALL = [row for bucket in (300, 200, 100) for row in DATA[bucket]]


def fetcher(data: dict[int, list[tuple[int, int]]], state_when_full: bool, calls: list[int] | None = None):
    async def fetch(partition: Partition, size: int, state: bytes | None) -> tuple[list[tuple[int, int]], bytes | None]:
        rows = data.get(partition.key[0], [])
        offset = int(state) if state else 0
        page = rows[offset : offset + size]
        end = offset + len(page)
        if calls is not None:
            calls.append(size)
        more = end < len(rows) or (state_when_full and len(page) == size)
        return page, str(end).encode() if more else None

    return fetch


def partitions(buckets=(300, 200, 100)) -> list[Partition]:
    return [Partition((b,), ("f1", "d1", b)) for b in buckets]


async def every_page(limit: int, state_when_full: bool, keep=lambda _: True) -> list[list[tuple[int, int]]]:
    pages, token = [], None
    while True:
        page = await read_page(from_list(partitions()), fetcher(DATA, state_when_full), limit, token, 1, True, keep)
        assert len(page.items) <= limit
        pages.append(page.items)
        if page.next_page_token is None:
            return pages
        token = page.next_page_token


@pytest.mark.parametrize("state_when_full", [False, True])
@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 9, 10])
async def test_pages_return_every_row_once_in_order(limit: int, state_when_full: bool) -> None:
    pages = await every_page(limit, state_when_full)

    assert [row for page in pages for row in page] == ALL
    assert all(len(page) == limit for page in pages[:-1] if page) or state_when_full


@pytest.mark.parametrize("limit", [1, 2, 4])
async def test_filtered_rows_never_leave_a_gap(limit: int) -> None:
    pages = await every_page(limit, True, keep=lambda row: row[1] % 2 == 1)
    assert [row for page in pages for row in page] == [row for row in ALL if row[1] % 2 == 1]


async def test_no_fetch_asks_for_more_than_the_page_needs() -> None:
    calls: list[int] = []
    page = await read_page(from_list(partitions()), fetcher(DATA, False, calls), 6, None, 1, True)
    assert [seq for _, seq in page.items] == [9, 8, 7, 6, 5, 4]
    assert calls == [6, 2]


async def test_a_token_whose_partition_expired_resumes_at_the_next_one() -> None:
    token = make_token((250,), b"3")  # bucket 250 is gone; its paging state means nothing for bucket 200
    page = await read_page(from_list(partitions()), fetcher(DATA, False), 10, token, 1, True)
    assert page.items == DATA[200] + DATA[100] and page.next_page_token is None


async def test_ascending_order_resumes_after_earlier_keys() -> None:
    ascending = [Partition((b, g), ()) for b, g in ((100, "a"), (100, "b"), (200, "a"))]
    data = {100: [(100, 1), (100, 2)], 200: [(200, 3)]}

    async def fetch(partition: Partition, size: int, state: bytes | None):
        rows = [(partition.key[1], seq) for _, seq in data[partition.key[0]]]
        return rows[:size], None

    page = await read_page(from_list(ascending), fetch, 10, make_token((100, "b"), None), 2, False)
    assert page.items == [("b", 1), ("b", 2), ("a", 3)]


@pytest.mark.parametrize("token", ["bogus", make_token((1, 2), None)])
async def test_foreign_tokens_are_refused_naming_them(token: str) -> None:
    with pytest.raises(ValueError, match="is not one this store issued"):
        await read_page(from_list(partitions()), fetcher(DATA, False), 5, token, 1, True)
