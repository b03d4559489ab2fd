"""Prefect's logs under the `marble` command: a failure is one line on stderr, so Prefect's
own tracebacks of failed runs, and its chatter after that line, are left out (`--debug`
keeps them)."""

from __future__ import annotations

import logging


def _prefect_loggers() -> list[logging.Logger]:
    return [
        logging.getLogger(n) for n in logging.root.manager.loggerDict if n.startswith("prefect")
    ]


class NoTracebacks(logging.Filter):
    """Drop the traceback Prefect logs with a failed flow or task run (the one-line error
    that follows says what failed); the log line itself stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def drop_tracebacks() -> None:
    """Configure Prefect's logging now (it would on the first flow run), then filter the
    tracebacks out of every handler it installed, the console one on the root logger too."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    for logger in [logging.getLogger(), *_prefect_loggers()]:
        for handler in logger.handlers:
            if not any(isinstance(f, NoTracebacks) for f in handler.filters):
                handler.addFilter(NoTracebacks())


def errors_only() -> None:
    """From now on, Prefect logs errors only."""
    for logger in _prefect_loggers():
        logger.setLevel(logging.ERROR)
