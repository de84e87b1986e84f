"""The ``sim`` table of a profile's device: settings of its simulated hardware."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["sim_options"]


def sim_options(
    what: str, prefix: str, sim: Mapping[str, Any] | None, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``sim`` merged over ``defaults``; a key the simulator does not know is an error naming
    the device (``what`` at ``prefix``), the keys and the known ones."""
    unknown = set(sim or {}) - set(defaults)
    if unknown:
        raise ValueError(
            f"{what} {prefix}: unknown sim option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(defaults)}"
        )
    return {**defaults, **(sim or {})}
