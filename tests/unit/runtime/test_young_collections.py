"""A serving process collects its youngest generation less often; the older generations keep their thresholds."""

import gc
from collections.abc import Iterator

import pytest

from fleetflow.runtime import service


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """CPython's defaults but for the older two, so a test can tell them apart (a gateway started in this process
    by an earlier test has changed the youngest one already); the process's own thresholds afterwards."""
    before = gc.get_threshold()
    gc.set_threshold(700, 11, 12)
    yield gc.get_threshold()
    gc.set_threshold(*before)


def test_only_the_youngest_generations_threshold_changes(thresholds: tuple[int, int, int]) -> None:
    service.collect_young_less_often()
    assert gc.get_threshold() == (service.YOUNG_COLLECTION_THRESHOLD, 11, 12)
    assert thresholds[0] < service.YOUNG_COLLECTION_THRESHOLD


def test_a_young_collection_still_comes_once_that_many_objects_are_kept(thresholds: tuple[int, int, int]) -> None:
    service.collect_young_less_often(5_000)
    collections = gc.get_stats()[0]["collections"]
    kept: list[list[int]] = [[] for _ in range(6_000)]  # tracked objects allocated and not freed
    assert gc.get_stats()[0]["collections"] > collections
    del kept
