"""How long a stage took, as the flows print it and the summaries record it.

with Stopwatch() as watch:
    ...
print(f"{name}: {watch.seconds:.0f} s")

summary = timed(run_filter, params, workspace)  # run_filter's summary | {"stage_s": 12.3}
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Stopwatch:
    """Wall-clock seconds (time.perf_counter) of a `with` block; inside the block, the
    seconds so far."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stop: float | None = None

    def __enter__(self) -> Stopwatch:
        self.start, self.stop = time.perf_counter(), None
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (time.perf_counter() if self.stop is None else self.stop) - self.start


def timed(fn: Callable[..., dict], *args) -> dict:
    """fn(*args)'s summary with the seconds it took, to 0.1 s, as `stage_s`."""
    with Stopwatch() as watch:
        summary = fn(*args)
    return summary | {"stage_s": round(watch.seconds, 1)}
