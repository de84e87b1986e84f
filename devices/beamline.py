"""Build a profile's devices and connect them all at once."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
from collections.abc import Mapping
from typing import Any

import ophyd
from ophyd_async.core import Device as AsyncDevice
from ophyd_async.core import PathProvider

from hutch.profile import Profile, ProfileError

from .nexus import nexus_class

__all__ = ["DeviceConnectionError", "connect_devices", "devices_metadata", "make_devices"]


def _pv_summary(pvs: list[str], shown: int = 3) -> str:
    """A few PVs in full; more as their common prefix and count (a whole IOC missing is
    hundreds of PVs: the prefix names it)."""
    if not pvs:
        return "no PV reported"
    if len(pvs) <= shown:
        return ", ".join(pvs)
    prefix = os.path.commonprefix(pvs)
    return f"{len(pvs)} PVs {prefix}* ({', '.join(pvs[:2])}, ...)"


class DeviceConnectionError(ConnectionError):
    """Devices failed to connect; ``failures`` maps each device name to its missing PVs."""

    def __init__(self, failures: Mapping[str, list[str]], timeout: float) -> None:
        self.failures = dict(failures)
        lines = [f"{name}: {_pv_summary(pvs)}" for name, pvs in self.failures.items()]
        super().__init__(
            f"{len(self.failures)} device(s) did not connect within {timeout:g} s; "
            "missing PVs:\n  " + "\n  ".join(lines)
        )


def make_devices(profile: Profile, path_provider: PathProvider | None = None) -> dict[str, Any]:
    """Instantiate every device of the profile (not yet connected), keyed by name.

    ophyd-async devices and classic ophyd (v1) devices are both built as
    ``cls(prefix, name=name, **options)``; devices that write their own files (a
    ``path_provider`` parameter, as ophyd-async's detectors have) also get ``path_provider``.
    """
    devices = {}
    for spec in profile.devices:
        cls = spec.device_class
        kwargs = dict(spec.options)
        if "path_provider" in inspect.signature(cls).parameters:
            if path_provider is None:
                raise ProfileError(
                    f"{profile.path}: device {spec.name!r} ({spec.cls}) writes files: "
                    "make_devices needs a path_provider"
                )
            kwargs["path_provider"] = path_provider
        try:
            devices[spec.name] = cls(spec.prefix, name=spec.name, **kwargs)
        except Exception as exc:
            raise ProfileError(
                f"{profile.path}: device {spec.name!r} ({spec.cls}, prefix {spec.prefix!r}) "
                f"could not be built: {exc}"
            ) from exc
    return devices


def devices_metadata(profile: Profile) -> dict[str, dict[str, Any]]:
    """What run documents say about the profile's devices (start document key ``devices``):
    class, PV prefix, description and how NeXus files write each one."""
    metadata = {}
    for spec in profile.devices:
        nexus = spec.nexus.model_dump(by_alias=True)
        nexus["class"] = nexus["class"] or nexus_class(spec.device_class)
        metadata[spec.name] = {
            "class": spec.cls,
            "prefix": spec.prefix,
            "description": spec.description,
            "nexus": nexus,
        }
    return metadata


def _missing_pvs(device: Any, error: BaseException) -> list[str]:
    if isinstance(device, ophyd.ophydobj.OphydObject):
        signals = device.walk_signals() if isinstance(device, ophyd.Device) else []
        missing = [
            getattr(item.item, "pvname", item.dotted_name)
            for item in signals
            if not item.item.connected
        ]
        return missing or [str(error)]
    # ophyd-async's NotConnectedError lists every signal with its source, e.g. ca://X.VAL
    return re.findall(r"ca://(\S+)", str(error)) or [f"{type(error).__name__}: {error}"]


async def connect_devices(
    devices: Mapping[str, Any], timeout: float = 10.0, *, raise_on_failure: bool = True
) -> dict[str, list[str]]:
    """Connect all devices concurrently, waiting at most ``timeout`` seconds in all.

    Returns a mapping of each device that failed to connect to the PVs it is missing; with
    ``raise_on_failure`` (the default) raises `DeviceConnectionError` listing all of them.
    Must run in the bluesky event loop (the one ophyd-async devices use).
    """

    async def connect(device: Any) -> None:
        if isinstance(device, AsyncDevice):
            await device.connect(timeout=timeout)
        else:
            # ophyd v1 connects in pyepics' threads; do not block the event loop waiting.
            await asyncio.to_thread(device.wait_for_connection, timeout=timeout)

    results = await asyncio.gather(
        *(connect(device) for device in devices.values()), return_exceptions=True
    )
    failures = {
        name: _missing_pvs(devices[name], result)
        for name, result in zip(devices, results, strict=True)
        if isinstance(result, BaseException)
    }
    if failures and raise_on_failure:
        raise DeviceConnectionError(failures, timeout)
    return failures
