"""The recorder's queues: what the receiving thread and the reduction lane put in each lane
of writers (`hutch.recording`), and how a lane takes it out: the session's pickled messages,
derived documents, the wake-up item and the lanes' ends; runs of events packed into pages."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from hutch.recorder import _CLOSE
from hutch.reduction.lane import LANE_END, Derived

__all__ = ["CATALOG_IDLE_S", "HIGH_WATER_MARK", "WAKE", "coalesce", "unpack"]

# Messages the recorder holds (received and acknowledged) before it stops acknowledging:
# minutes of a fast scan.
HIGH_WATER_MARK = 100_000
# The catalogue's held-back events are written once the recorder has had nothing to do for
# this long: never while a fast scan keeps it busy (each request costs ~50 ms of the tiled
# server, so a request per event would load the machine that acquires), at once after it.
CATALOG_IDLE_S = 0.1
# What a lane other than the main thread's posts for the main thread to send, and the item
# that wakes the main thread to send it.
WAKE = object()


def unpack(items: list[Any]) -> tuple[list[tuple[str, Any]], int]:
    """The messages among ``items`` (the session's, pickled; derived documents; `WAKE`),
    and how many of the lanes feeding this queue ended among them: the session (its close,
    or None if it died) and the reduction lane (`LANE_END`)."""
    messages, ends = [], 0
    for data in items:
        if data is WAKE:
            continue
        if data is LANE_END:
            ends += 1
        elif isinstance(data, Derived):
            messages.append(data.message)
        elif data is None or (message := pickle.loads(data))[0] == _CLOSE:
            ends += 1  # nothing more comes from the session
        else:
            messages.append(message)
    return messages, ends


def coalesce(messages: list[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The messages in order, runs of events of one stream packed into one event page."""
    from event_model import pack_event_page  # not before receiving: see _record

    events: list[dict] = []
    for name, doc in messages:
        if events and (name != "event" or doc["descriptor"] != events[0]["descriptor"]):
            yield "event_page", pack_event_page(*events)
            events = []
        if name == "event":
            events.append(doc)
        else:
            yield name, doc
    if events:
        yield "event_page", pack_event_page(*events)
