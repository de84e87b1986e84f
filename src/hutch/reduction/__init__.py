"""Online reduction: computations on a run's documents whose results are documents of a
derived run, live (the recorder's reduction lane, `hutch.reduction.lane`) and on replay
(`hutch reduce`, `hutch.reduction.replay`).

- `hutch.reduction.base`: `Reduction`, what a reduction is, and the kinds hutch ships;
- `hutch.reduction.runner`: `ReductionRunner`, documents in, derived runs out;
- `hutch.reduction.roi`, `peaks`, `normalise`, `azimuthal`: the reductions;
- `hutch.reduction.points` and `external`: a stream's whole points, frames read from the
  detectors' files.

Nothing is imported here: the recorder imports the lane before its heavy imports.
"""
