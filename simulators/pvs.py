"""PV properties the simulated IOCs share: enums and long strings as EPICS records serve them."""

from __future__ import annotations

from typing import Any

from caproto import ChannelType
from caproto.server import PvpropertyChar, pvproperty

__all__ = ["TEXT_LENGTH", "enum_pv", "text_pv"]

TEXT_LENGTH = 1024
"""Length of the long-string (CHAR waveform) PVs: file paths and names, messages."""


def enum_pv(name: str, choices: tuple[str, ...], value: str | None = None, **kwargs: Any) -> Any:
    """An enum PV of ``choices``, at ``value`` (default: the first)."""
    return pvproperty(
        name=name,
        value=choices[0] if value is None else value,
        dtype=ChannelType.ENUM,
        enum_strings=choices,
        **kwargs,
    )


class _Text(PvpropertyChar):
    """A long string (CHAR waveform). caproto 1.3 fails a put of the empty string, a lone
    NUL as clients send it (ophyd-async clears XMLFileName so): that put is done here."""

    async def write_from_dbr(self, data: Any, data_type: Any, metadata: Any, **kwargs: Any) -> None:
        if data_type == ChannelType.CHAR and not bytes(data).split(b"\0", 1)[0]:
            await self.write("")
            return
        await super().write_from_dbr(data, data_type, metadata, **kwargs)


def text_pv(name: str, value: str = "", **kwargs: Any) -> Any:
    """A long string PV: areaDetector's paths and names are CHAR waveforms, because
    DBR_STRING stops at 40 characters."""
    return pvproperty(name=name, value=value, dtype=_Text, max_length=TEXT_LENGTH, **kwargs)
