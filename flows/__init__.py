"""Prefect flows, their typed parameters, and the `marble` command line: wiring only."""

import tasks  # noqa: F401  (applies the offline/telemetry defaults before Prefect loads)
