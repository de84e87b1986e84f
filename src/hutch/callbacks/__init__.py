"""Document consumers: subscribe them to a RunEngine, or feed them a replay of a run."""

from hutch.callbacks.nexus import NexusWriter
from hutch.callbacks.plot import PlotSaver

__all__ = ["NexusWriter", "PlotSaver"]
