"""Fixtures of the end-to-end tests (the daemon as a subprocess)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A notification receiver on 127.0.0.1, shut down after the test."""
    got = Receiver()
    yield got
    got.server.shutdown()
    got.server.server_close()
