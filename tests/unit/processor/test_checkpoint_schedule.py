"""A checkpoint that takes long pushes the next one out, so checkpoints never take more than their share."""

import pytest

from fleetflow.processor.runner import CHECKPOINT_TIME_SHARE, next_checkpoint_at


def test_a_quick_checkpoint_keeps_the_configured_interval() -> None:
    assert next_checkpoint_at(100.0, 2.0, 0.01) == 102.0


def test_a_slow_checkpoint_waits_until_it_is_its_share_of_the_time() -> None:
    later = next_checkpoint_at(100.0, 2.0, 0.5)
    assert later == pytest.approx(100.0 + 0.5 / CHECKPOINT_TIME_SHARE)
    assert 0.5 / (later - 100.0) == pytest.approx(CHECKPOINT_TIME_SHARE)
