"""An areaDetector camera writing HDF5 files, as an ophyd-async ``StandardDetector``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated as A

from event_model import DataKey
from ophyd_async.core import (
    DetectorTriggerLogic,
    PathProvider,
    SignalDict,
    SignalR,
    SignalRW,
    StrictEnum,
    TriggerInfo,
)
from ophyd_async.epics import adcore
from ophyd_async.epics.core import PvSuffix

__all__ = ["AreaDetector", "AreaDetectorDriverIO", "AreaDetectorTriggerLogic", "TriggerMode"]


class TriggerMode(StrictEnum):
    """The driver's TriggerMode: frames timed by the detector, or one per external edge."""

    INTERNAL = "Internal"
    EXTERNAL = "External"


class AreaDetectorDriverIO(adcore.ADBaseIO):
    """ophyd-async's areaDetector driver PVs, plus the trigger mode and the readout time."""

    trigger_mode: A[SignalRW[TriggerMode], PvSuffix.rbv("TriggerMode")]
    readout_time: A[SignalR[float], PvSuffix("ReadoutTime_RBV")]


@dataclass
class AreaDetectorTriggerLogic(DetectorTriggerLogic):
    """Internal triggering (frames timed by the driver) and external edge triggering (one frame
    per edge); the dead time between frames is the driver's readout time."""

    driver: AreaDetectorDriverIO

    def config_sigs(self) -> set[SignalR]:
        return {self.driver.readout_time}

    def get_deadtime(self, config_values: SignalDict) -> float:
        return config_values[self.driver.readout_time]

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        # Deadtime 0 asks for the fastest frames: without a period the driver would keep
        # the AcquirePeriod of an earlier, slower scan.
        deadtime = deadtime or await self.driver.readout_time.get_value()
        await asyncio.gather(
            self.driver.trigger_mode.set(TriggerMode.INTERNAL),
            adcore.prepare_exposures(self.driver, num, livetime, deadtime),
        )

    async def prepare_edge(self, num: int, livetime: float) -> None:
        # num 0 is an unbounded number of triggers: acquire until stopped.
        mode = adcore.ADImageMode.MULTIPLE if num else adcore.ADImageMode.CONTINUOUS
        coros = [
            self.driver.trigger_mode.set(TriggerMode.EXTERNAL),
            self.driver.image_mode.set(mode),
            self.driver.num_images.set(num),
        ]
        if livetime:
            coros.append(self.driver.acquire_time.set(livetime))
        await asyncio.gather(*coros)

    async def default_trigger_info(self) -> TriggerInfo:
        return await adcore.trigger_info_from_num_images(self.driver)


class AreaDetector(adcore.AreaDetector[AreaDetectorDriverIO]):
    """An areaDetector camera (driver ``PREFIXcam1:``) saving its frames to HDF5 files
    (``PREFIXHDF1:``) where ``path_provider`` says.

    In a step scan each trigger takes one frame (or the prepared number); in a fly scan,
    prepared for external edges, it takes a frame per trigger pulse. Events do not carry the
    images: they refer to the frames in the file (stream resource and stream datum documents),
    which the file holds by the time the event is emitted. The configuration readings hold the
    exposure time and period, the trigger mode and the readout time, and
    ``await det.get_trigger_deadtime()`` gives the dead time a frame needs after its exposure.
    """

    def __init__(self, prefix: str, path_provider: PathProvider, name: str = "") -> None:
        driver = AreaDetectorDriverIO(prefix + "cam1:")
        super().__init__(
            driver,
            prefix,
            adcore.ADWriterFactory.hdf(path_provider),
            acquire_logic=adcore.ADAcquireLogic(driver),
            trigger_logic=AreaDetectorTriggerLogic(driver),
            config_sigs=(driver.trigger_mode,),
            name=name,
        )

    async def describe(self) -> dict[str, DataKey]:
        return _frame_shapes(await super().describe())

    async def describe_collect(self) -> dict[str, DataKey]:
        return _frame_shapes(await super().describe_collect())


def _frame_shapes(data_keys: dict[str, DataKey]) -> dict[str, DataKey]:
    """Describe one frame per event as a frame, ``[height, width]``.

    ophyd-async describes the frames of an event as ``[frames_per_event, height, width]``
    even for one frame per event. The detector's file holds ``(frames, height, width)``, and
    the catalogue (tiled) serves the file's array only while its rank is that of the data
    key's shape with a leading axis of events: a file holding more frames than the run
    references (the frames of the next collect, or after the detector died) is trimmed to
    the run's frames when the ranks match, and refused when they do not.
    """
    for key in data_keys.values():
        shape = key.get("shape") or []
        if len(shape) >= 3 and shape[0] == 1:
            key["shape"] = shape[1:]
    return data_keys
