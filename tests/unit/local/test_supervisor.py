"""The supervisor's back-off: quick restarts for a child that ran a while, slower ones for a crash loop."""

import asyncio
from pathlib import Path

import pytest

from fleetflow.local.datadir import DataDirInUse, DataDirLock
from fleetflow.local.supervisor import STABLE_AFTER, CrashCount, Supervisor, restart_delay


def test_restart_delay_doubles_from_0_2_s_up_to_5_s() -> None:
    assert [restart_delay(n) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_a_child_that_ran_long_enough_starts_its_back_off_over() -> None:
    crashes = CrashCount()
    assert [crashes.crashed_after(1.0) for _ in range(4)] == [1, 2, 3, 4]
    assert crashes.crashed_after(STABLE_AFTER) == 1
    assert crashes.crashed_after(0.5) == 2


class FlakyChild:
    """Started once already; exits right after each of its first `lives` starts, then stays up."""

    name = "flaky"
    stopping = False

    def __init__(self, clock: list[float], lives: int):
        self.clock, self.lives = clock, lives
        self.restarts, self.started_at, self.spawned = 0, clock[0], 1

    def spawn(self) -> None:
        self.spawned += 1
        self.started_at = self.clock[0]

    async def wait_ready(self, timeout: float = 30.0) -> None:
        return None

    def crashed(self) -> bool:
        return self.spawned <= self.lives

    @property
    def exit_code(self) -> int | None:
        return -9 if self.crashed() else None


async def test_every_exit_is_restarted_until_the_child_stays_up() -> None:
    clock = [100.0]
    child = FlakyChild(clock, lives=2)
    stop = asyncio.Event()
    task = asyncio.create_task(Supervisor([child], clock=lambda: clock[0]).run(stop))
    async with asyncio.timeout(5):
        while child.spawned < 3:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # a child that stays up is left alone
    stop.set()
    await task
    assert (child.spawned, child.restarts) == (3, 2)


def test_a_second_lock_on_a_data_dir_names_the_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirInUse, match=r"in use by another fleetflow up \(pid [0-9]+\); stop it with Ctrl-C"):
        DataDirLock(tmp_path).acquire()
    first.release()
    second = DataDirLock(tmp_path)
    second.acquire()
    assert second.held
    second.release()
