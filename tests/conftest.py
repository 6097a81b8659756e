from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.natsserver import NatsServer, running_nats


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream, storing under the test's tmp_path."""
    with running_nats(tmp_path / "jetstream") as server:
        yield server
