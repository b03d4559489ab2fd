"""Progress of long loops for whoever watches: the orchestrator sets a reporter (the flows
show it as a Prefect progress artifact); without one, reporting does nothing.

    with reporting(fn):            # fn(name, done, total)
        train(...)                 # calls report("train clip-base", step, steps)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

Reporter = Callable[[str, int, int], None]
_reporter: ContextVar[Reporter | None] = ContextVar("marble_progress", default=None)
_last: ContextVar[float] = ContextVar("marble_progress_last", default=0.0)
MIN_INTERVAL_S = 2.0  # a report at most this often, besides the first and the last


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[None]:
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def report(name: str, done: int, total: int) -> None:
    """Tell the reporter, if any, that `done` of `total` units of `name` are done."""
    reporter = _reporter.get()
    if reporter is None:
        return
    now = time.monotonic()
    if done in (0, total) or now - _last.get() >= MIN_INTERVAL_S:
        _last.set(now)
        reporter(name, done, total)
