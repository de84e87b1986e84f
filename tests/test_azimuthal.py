"""Azimuthal integration (pyFAI) of the simulated powder detector: det2 of the demo beamline
draws LaB6's Debye-Scherrer rings at the geometry of profiles/demo_powder.poni, its frames
come over Channel Access and HDF5 in a real run, and the profile's det2_powder reduction,
fed the run's documents, finds every ring at its true q."""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from event_model import DocumentNames, schema_validators
from pydantic import ValidationError
from scipy.signal import find_peaks

from hutch import plans
from hutch.profile import ReductionSpec
from hutch.reduction.azimuthal import AzimuthalIntegration, AzimuthalParameters, load_integrator
from hutch.reduction.points import Block
from hutch.reduction.runner import ReductionRunner
from hutch.simulators.areadetector import AreaDetectorSim
from hutch.simulators.powder import STANDARDS, powder_geometry, powder_pattern

PONI = Path(__file__).resolve().parents[1] / "profiles" / "demo_powder.poni"
WAVELENGTH = 0.7  # Å, as the PONI file says


def true_q(calibrant: str) -> np.ndarray:
    """q (nm⁻¹) of every reflection of ``calibrant``, from pyFAI's table: q = 2π / d."""
    from pyFAI.calibrant import get_calibrant

    return np.array([2 * math.pi / (d / 10) for d in get_calibrant(calibrant).dspacing])


def ring_peaks(intensity: np.ndarray, sigma: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The q of I(q)'s peaks standing out from the noise (prominence > 10 sigma)."""
    peaks, props = find_peaks(intensity, prominence=0)
    strong = props["prominences"] > 10 * sigma[peaks]
    return q[peaks[strong]]


def assert_rings_found(q_found: np.ndarray, q: np.ndarray, calibrant: str) -> list[float]:
    """Every reflection of ``calibrant`` in the q range is a peak within one bin of its true
    q, and no other peak stands out; the true q of the rings."""
    step = q[1] - q[0]
    truth = [t for t in true_q(calibrant) if q[0] <= t <= q[-1]]
    assert len(truth) >= 3, truth
    for t in truth:
        nearest = q_found[np.argmin(np.abs(q_found - t))]
        assert abs(nearest - t) <= step, f"{calibrant} ring at q={t:.3f}: nearest peak {nearest}"
    assert len(q_found) == len(truth), (q_found, truth)
    return truth


def reduce(docs: list[tuple[str, dict]], *reductions: Any) -> dict[str, list[tuple[str, dict]]]:
    """Feed the raw run's ``docs`` to a `ReductionRunner` of ``reductions``; each derived
    run's documents, by reduction name."""
    emitted: list[tuple[str, dict]] = []
    runner = ReductionRunner(lambda start: list(reductions), lambda n, d: emitted.append((n, d)))
    for name, doc in docs:
        runner(name, doc)
    runner.close()
    by_run: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    run_of: dict[str, str] = {}  # start and descriptor uids -> reduction name
    for name, doc in emitted:
        if name == "start":
            run_of[doc["uid"]] = doc["reduction"]["name"]
        elif name == "descriptor":
            run_of[doc["uid"]] = run_of[doc["run_start"]]
        owner = doc["uid"] if name == "start" else doc.get("run_start") or doc["descriptor"]
        by_run[run_of[owner]].append((name, doc))
    return dict(by_run)


def events(docs: list[tuple[str, dict]], stream: str = "primary") -> dict[str, np.ndarray]:
    """The data of ``stream``'s events, stacked per field."""
    (descriptor,) = [d["uid"] for n, d in docs if n == "descriptor" and d["name"] == stream]
    data: dict[str, list] = defaultdict(list)
    for name, doc in docs:
        if name == "event_page" and doc["descriptor"] == descriptor:
            for key, values in doc["data"].items():
                data[key].extend(values)
        elif name == "event" and doc["descriptor"] == descriptor:
            for key, value in doc["data"].items():
                data[key].append(value)
    return {key: np.asarray(values) for key, values in data.items()}


def stop_of(docs: list[tuple[str, dict]]) -> dict:
    (stop,) = [d for n, d in docs if n == "stop"]
    return stop


@pytest.fixture(scope="module")
def powder_scan(session) -> list[tuple[str, dict]]:
    """The documents of a 3-point step scan with det1 (beam spot) and det2 (powder) on the
    simulated demo beamline."""
    d = session.devices
    docs: list[tuple[str, dict]] = []
    token = session.RE.subscribe(lambda name, doc: docs.append((name, copy.deepcopy(doc))))
    try:
        result = session.RE(
            plans.step_scan([d["det1"], d["det2"]], d["sample_x"], -0.5, 0.5, 3, exposure=0.01)
        )
    finally:
        session.RE.unsubscribe(token)
    assert result.exit_status == "success", result.reason
    return docs


def test_demo_profile_names_the_geometry_once(demo_profile):
    """det2 is a powder detector of the detector IOC without trigger cable or beam spot;
    its simulator takes its geometry from the det2_powder reduction's PONI file."""
    det2 = demo_profile.device("det2")
    assert det2.ioc == demo_profile.device("det1").ioc
    assert det2.sim["powder"] == "LaB6"
    assert not {"trigger", "spot", "poni"} & set(det2.sim)
    spec = demo_profile.reduction("det2_powder")
    assert (spec.kind, spec.model_extra["detector"]) == ("azimuthal", "det2")
    assert powder_geometry(demo_profile, det2) == PONI
    assert spec.make(demo_profile.path.parent).parameters.poni == PONI


def test_rings_of_a_real_run_are_found_at_their_true_q(powder_scan, demo_profile):
    """det2's frames of a real run, integrated by the profile's det2_powder reduction fed
    the run's documents: every LaB6 reflection on the detector is a peak of I(q) within one
    bin of q = 2π/d, in every frame; the radial axis is in every event."""
    (raw_start,) = [d for n, d in powder_scan if n == "start"]
    (raw_descriptor,) = [d for n, d in powder_scan if n == "descriptor" and d["name"] == "primary"]
    assert raw_descriptor["data_keys"]["det2"]["shape"][-2:] == [256, 256]
    reduction = demo_profile.reduction("det2_powder").make(demo_profile.path.parent)
    derived = reduce(powder_scan, reduction)["det2_powder"]
    assert stop_of(derived)["exit_status"] == "success", stop_of(derived)["reason"]
    (start,) = [d for n, d in derived if n == "start"]
    assert start["raw_uid"] == raw_start["uid"]
    assert start["reduction"]["parameters"]["poni"] == str(PONI)

    data = events(derived)
    intensity, q, sigma = data["I"], data["q"], data["sigma"]
    assert intensity.shape == q.shape == sigma.shape == (3, 400)
    np.testing.assert_allclose(data["sample_x"], [-0.5, 0.0, 0.5], atol=1e-3)
    assert (q == q[0]).all() and (np.diff(q[0]) > 0).all()
    # The simulator drew exactly the reflections in the q range the reduction covers.
    placed = [ring.q for ring in powder_pattern("LaB6", PONI).rings]
    for frame in range(3):
        found = ring_peaks(intensity[frame], sigma[frame], q[frame])
        truth = assert_rings_found(found, q[frame], "LaB6")
        np.testing.assert_allclose(truth, placed)

    summary = events(derived, "summary")
    assert summary["wavelength"][0] == pytest.approx(WAVELENGTH)
    assert summary["distance"][0] == pytest.approx(70.0)


@pytest.mark.parametrize("calibrant", STANDARDS)
def test_each_standard_gives_its_rings(calibrant):
    """Si, LaB6 and CeO2: the simulated frame's rings, integrated, sit at their true q."""
    pattern = powder_pattern(calibrant, PONI)
    frames = np.stack([pattern.frame(np.random.default_rng(7))])
    reduction = AzimuthalIntegration(
        "powder", AzimuthalParameters(detector="det2", poni=PONI, npt=400)
    )
    reduction.describe({}, {"name": "primary", "data_keys": {"det2": {"shape": [256, 256]}}})
    out = reduction.reduce(Block(np.array([1]), np.array([0.0]), {"det2": frames}))
    found = ring_peaks(out["I"][0], out["sigma"][0], out["q"][0])
    truth = assert_rings_found(found, out["q"][0], calibrant)
    np.testing.assert_allclose(truth, [ring.q for ring in pattern.rings])


def test_parameter_errors_end_the_derived_run_with_one_line_naming_the_file(powder_scan, tmp_path):
    """A PONI file that is not there, and a PONI file of another detector (det1's frames
    are 96 x 128): each derived run fails with a one-line reason naming the file; the good
    reduction beside them is not affected."""
    missing = AzimuthalIntegration(
        "missing", AzimuthalParameters(detector="det2", poni="nowhere.poni").resolved(tmp_path)
    )
    wrong = AzimuthalIntegration("wrong", AzimuthalParameters(detector="det1", poni=PONI))
    good = AzimuthalIntegration("good", AzimuthalParameters(detector="det2", poni=PONI))
    derived = reduce(powder_scan, missing, wrong, good)
    assert stop_of(derived["good"])["exit_status"] == "success"
    reasons = {name: stop_of(derived[name]) for name in ("missing", "wrong")}
    for stop in reasons.values():
        assert stop["exit_status"] == "fail" and "\n" not in stop["reason"]
    assert f"poni: no PONI file {tmp_path / 'nowhere.poni'}" in reasons["missing"]["reason"]
    assert (
        f"poni {PONI}: its detector is 256 x 256 pixels (rows x columns), the frames 96 x 128"
        in reasons["wrong"]["reason"]
    )


def test_parameters_are_checked_when_the_profile_loads():
    """Bad values are profile errors naming the parameter; paths are relative to the
    profile's folder, absolute ones kept."""
    base = {"name": "p", "kind": "azimuthal", "detector": "det2", "poni": "x.poni"}
    for bad, key in (
        ({"unit": "q_furlong^-1"}, "unit"),
        ({"npt": 1}, "npt"),
        ({"radial_range": [30, 10]}, "radial_range"),
    ):
        with pytest.raises(ValidationError, match=key):
            ReductionSpec.model_validate({**base, **bad})
    parameters = ReductionSpec.model_validate(base).make(Path("/beamline/profiles")).parameters
    assert parameters.poni == Path("/beamline/profiles/x.poni")
    assert AzimuthalParameters(detector="d", poni=PONI).resolved(Path("/x")).poni == PONI


def test_the_integrator_is_kept_while_its_poni_file_is_unchanged(tmp_path):
    """Runs after the first reuse pyFAI's integrator (and its sparse matrices); a new
    calibration written to the file is read again."""
    poni = tmp_path / "det.poni"
    poni.write_text(PONI.read_text())
    first = load_integrator(poni, (256, 256))
    assert load_integrator(poni, (256, 256)) is first
    poni.write_text(PONI.read_text().replace("Distance: 0.07", "Distance: 0.0712"))
    again = load_integrator(poni, (256, 256))
    assert again is not first and again.dist == pytest.approx(0.0712)


def test_simulator_errors_name_the_option_and_file(tmp_path, demo_profile):
    """The powder detector refuses a PONI file that is not there, a frame size its PONI
    file's detector does not have, and a powder without a geometry in the profile."""
    with pytest.raises(ValueError, match=f"sim.poni: no PONI file {tmp_path}/x.poni"):
        AreaDetectorSim("T:", sim={"powder": "LaB6", "poni": str(tmp_path / "x.poni")})
    sim = AreaDetectorSim("T:", sim={"powder": "LaB6", "poni": str(PONI), "width": 128})
    with pytest.raises(ValueError, match=f"poni {PONI}: its detector is 256 x 256 pixels"):
        sim.powder  # noqa: B018
    with pytest.raises(ValueError, match="'Unobtainium' is not a calibrant pyFAI knows"):
        powder_pattern("Unobtainium", PONI)
    det2 = demo_profile.device("det2")
    alone = demo_profile.model_copy(update={"reductions": []})
    with pytest.raises(ValueError, match="sim.powder needs the detector's geometry"):
        powder_geometry(alone, det2)


def test_simulated_frames_are_the_pattern_with_poisson_noise():
    """The powder detector's frame size is its PONI file's; its frames differ by their noise
    only: their mean is the expected pattern, and so is their variance."""
    sim = AreaDetectorSim("T:", sim={"powder": "CeO2", "poni": str(PONI)})
    expected = sim.powder.expected
    assert expected.shape == (sim.options["height"], sim.options["width"]) == (256, 256)
    rng = np.random.default_rng(3)
    frames = np.stack([sim.powder.frame(rng) for _ in range(200)]).astype(float)
    mean, var = frames.mean(axis=0), frames.var(axis=0, ddof=1)
    ring = expected > expected.mean() + 5 * expected.std()
    assert ring.sum() > 100  # ring pixels
    assert np.mean(mean[ring] / expected[ring]) == pytest.approx(1.0, abs=0.01)
    assert np.mean(var[ring] / expected[ring]) == pytest.approx(1.0, abs=0.05)


def test_derived_documents_are_valid_event_model_documents(powder_scan, demo_profile):
    """Every document of the raw run and of its azimuthal derived run validates against
    event-model's schemas; the data keys say each array's shape, dimension and units."""
    reduction = demo_profile.reduction("det2_powder").make(demo_profile.path.parent)
    derived = reduce(powder_scan, reduction)["det2_powder"]
    names = []
    for name, doc in [*powder_scan, *derived]:
        schema_validators[DocumentNames(name)].validate(doc)
        names.append(name)
    assert {"start", "descriptor", "event_page", "event", "stop"} <= set(names)
    (descriptor,) = [d for n, d in derived if n == "descriptor" and d["name"] == "primary"]
    keys = descriptor["data_keys"]
    assert keys["I"]["shape"] == keys["q"]["shape"] == keys["sigma"]["shape"] == [400]
    assert keys["q"]["units"] == "1/nm" and keys["I"]["dims"] == ["q"]
    assert keys["I"]["source"] == "reduction:det2_powder"


def test_the_recorder_integrates_det2_live_into_the_catalogue(session, powder_scan, demo_profile):
    """The recorder's reduction lane runs det2_powder on the run as it is taken: its derived
    run is written (NeXus, PNG) and the catalogue serves it, I(q) per point, equal to the
    documents' reduction."""
    (raw_start,) = [d for n, d in powder_scan if n == "start"]
    runs = session.runs_container
    (uid,) = [
        uid
        for uid in session.recorder.derived_runs(raw_start["uid"])
        if runs[uid].metadata["start"]["reduction"]["name"] == "det2_powder"
    ]
    live = runs[uid]
    assert live.metadata["stop"]["exit_status"] == "success"
    assert {"nexus", "png"} <= session.recorder.outputs(uid).keys()
    served = live["primary"].read()
    assert served["I"].shape == served["q"].shape == (3, 400)
    assert live.metadata["start"]["reduction"]["parameters"]["poni"] == str(PONI)
    reduction = demo_profile.reduction("det2_powder").make(demo_profile.path.parent)
    offline = events(reduce(powder_scan, reduction)["det2_powder"])
    np.testing.assert_allclose(np.asarray(served["I"]), offline["I"])
    np.testing.assert_allclose(np.asarray(served["q"]), offline["q"])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"error_model": None, "unit": "2th_deg"},
        {"polarization": 0.95, "radial_range": (5.0, 40.0), "npt": 200},
        {"mask": "mask.npy", "method": ("full", "csr", "cython")},
        {"error_model": "azimuthal"},  # pyFAI's integrate1d frame by frame
    ],
    ids=["poisson", "no-errors", "polarization-range", "mask-full-split", "azimuthal-errors"],
)
def test_a_block_of_frames_integrates_as_pyfai_integrates_each(options, tmp_path):
    """The reduction integrates a block of frames in one sparse product with pyFAI's own
    matrix: I and sigma equal pyFAI's integrate1d of each frame with the same parameters,
    also with a mask, pixel splitting, polarization and a radial range; empty bins too."""
    pattern = powder_pattern("LaB6", PONI)
    rng = np.random.default_rng(11)
    frames = np.stack([pattern.frame(rng) for _ in range(5)])
    frames[:, :4] = 0  # dark rows: pyFAI's Poisson variance is max(counts, 1)
    if "mask" in options:
        mask = np.zeros((256, 256), dtype=np.uint8)
        mask[100:140, :] = 1  # a dead module across the rings
        np.save(tmp_path / "mask.npy", mask)
        options = {**options, "mask": tmp_path / "mask.npy"}
    parameters = AzimuthalParameters(detector="det2", poni=PONI, npt=400).model_copy(update=options)
    reduction = AzimuthalIntegration("powder", parameters)
    reduction.describe({}, {"name": "primary", "data_keys": {"det2": {"shape": [256, 256]}}})
    assert (reduction._sparse is not None) == (options.get("error_model") != "azimuthal")
    out = reduction.reduce(Block(np.arange(1, 6), np.zeros(5), {"det2": frames}))

    ai = load_integrator(PONI, (256, 256))
    mask = np.load(options["mask"]) if "mask" in options else None
    for i, frame in enumerate(frames):
        expected = ai.integrate1d(
            frame,
            parameters.npt,
            unit=parameters.unit,
            method=parameters.method,
            mask=mask,
            radial_range=parameters.radial_range,
            polarization_factor=parameters.polarization,
            error_model=parameters.error_model,
        )
        np.testing.assert_allclose(out["I"][i], expected.intensity, rtol=1e-5, atol=1e-9)
        radial_key = "q" if parameters.unit.startswith("q") else "two_theta"
        np.testing.assert_allclose(out[radial_key][i], expected.radial, rtol=1e-6)
        if parameters.error_model:
            np.testing.assert_allclose(out["sigma"][i], expected.sigma, rtol=1e-5, atol=1e-9)
