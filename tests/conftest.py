import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.leftover_tasks import described, end_leftover_tasks
from tests.support.natsserver import NatsServer, running_nats

# How long the tasks an async test left running may take to end once cancelled; far more than a cancelled
# task's clean-up takes, far less than pytest-timeout's 300 s.
LEFTOVER_TASKS_END_S = 10.0


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream, storing under the test's tmp_path."""
    with running_nats(tmp_path / "jetstream") as server:
        yield server


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if inspect.iscoroutinefunction(metafunc.function) and "leftover_tasks_end" not in metafunc.fixturenames:
        # First: set up right after the test's event loop, so torn down after every other fixture of the test
        # (the services they stop) and before pytest-asyncio closes the loop.
        metafunc.fixturenames.insert(0, "leftover_tasks_end")


@pytest.fixture
async def leftover_tasks_end() -> AsyncIterator[None]:
    """Fails an async test whose leftover tasks do not end when cancelled, naming them and where they wait,
    instead of letting the event loop's close wait for them for ever."""
    yield
    stuck = await end_leftover_tasks(LEFTOVER_TASKS_END_S)
    if stuck:
        pytest.fail(
            f"{len(stuck)} task(s) this test left running did not end within {LEFTOVER_TASKS_END_S:.0f} s of "
            f"being cancelled (each swallowed its cancellation and waits again):\n{described(stuck)}",
            pytrace=False,
        )
