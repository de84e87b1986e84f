"""The base of the errors hutch reports to its user as one message."""

from __future__ import annotations

import logging

__all__ = ["HutchError", "PlanArgumentError", "Refusal", "quiet_refusals"]


class HutchError(Exception):
    """Something hutch cannot do; the message names what is at fault (PV, device, file...)."""


class Refusal(HutchError, ValueError):
    """Bad input refused before anything moved and before any run opened: a plan or an
    argument the hardware or the profile does not allow, or missing metadata. The message
    says what and why in one line; it is the user's to fix, so no traceback is shown."""


class PlanArgumentError(Refusal):
    """A plan or one of its arguments is not acceptable; the message names which."""


class _NoRefusalTracebacks(logging.Filter):
    """Drops the RunEngine's "Run aborted" log record (a full traceback) for a `Refusal`:
    whoever called the RunEngine reports it, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, Refusal)


_FILTER = _NoRefusalTracebacks()


def quiet_refusals() -> None:
    """Keep refusals' tracebacks out of bluesky's log (idempotent). The RunEngine logs every
    exception that ends a plan with its traceback on the ``bluesky`` logger (shown on stderr
    when nothing else handles it), even when a plan refused its arguments before it started."""
    logger = logging.getLogger("bluesky")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
