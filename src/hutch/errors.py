"""The base of the errors hutch reports to its user as one message."""

__all__ = ["HutchError"]


class HutchError(Exception):
    """Something hutch cannot do; the message names what is at fault (PV, device, file...)."""
