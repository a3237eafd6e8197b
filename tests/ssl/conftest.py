"""One torch thread per test: on a shared 2-core machine two threads spin against other jobs."""

from __future__ import annotations

import pytest

from collapse_probe._utils.threads import single_threaded


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield
