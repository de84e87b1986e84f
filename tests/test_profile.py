"""Beamline profiles: the demo validates; malformed profiles fail naming file, line, key."""

from pathlib import Path

import pytest

from hutch.profile import ProfileError, load_profile

DEMO = Path(__file__).resolve().parents[1] / "profiles" / "demo.toml"


def test_demo_profile_loads():
    profile = load_profile("demo")
    assert profile.path == DEMO
    assert {d.name for d in profile.devices} == {
        "sample_x",
        "sample_y",
        "slit_gap",
        "ring_current",
        "det",
        "panda1",
        "det1",
        "det2",
    }
    assert profile.iocs == ["main", "detector"]
    assert profile.device("det1").ioc == "detector"
    assert profile.metadata.facility == "HUTCH"
    assert "align" in profile.plans and "scan" in profile.plans
    assert profile.simulation.peak.axis == "sample_x"


def _broken(tmp_path, old: str, new: str) -> Path:
    text = DEMO.read_text()
    assert old in text
    path = tmp_path / "broken.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_unknown_device_class_names_file_line_and_key(tmp_path):
    path = _broken(tmp_path, 'class = "hutch.devices.Scaler"', 'class = "hutch.devices.Nope"')
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert f"{path}:{_line_of(path, 'hutch.devices.Nope')}" in message
    assert "devices.4.class" in message
    assert "no attribute 'Nope'" in message


def test_missing_key_and_bad_type(tmp_path):
    path = _broken(tmp_path, 'prefix = "DEMO:SAMPLE:Y"\n', "")
    with pytest.raises(ProfileError, match=r"devices\.1\.prefix: Field required"):
        load_profile(path)
    path = _broken(tmp_path, "port = 5064", 'port = "fast"')
    with pytest.raises(ProfileError, match=rf"{path}:\d+: simulation\.port"):
        load_profile(path)


def test_unknown_plan_and_dangling_reference(tmp_path):
    path = _broken(tmp_path, '"snake_fly_scan",', '"snake_fly_scan", "teleport",')
    with pytest.raises(ProfileError, match="unknown plan.*'teleport'"):
        load_profile(path)
    path = _broken(tmp_path, 'axis = "sample_x"', 'axis = "sample_z"')
    with pytest.raises(ProfileError, match="simulation.peak.axis names device 'sample_z'"):
        load_profile(path)


def test_invalid_toml_and_missing_profile(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(ProfileError, match=rf"{path}: not valid TOML.*line 1"):
        load_profile(path)
    with pytest.raises(ProfileError, match="no profile named 'atlantis'"):
        load_profile("atlantis")


def test_suspender_must_name_a_device_and_resume_above_its_floor(tmp_path):
    path = _broken(tmp_path, 'device = "ring_current"', 'device = "ring_currant"')
    with pytest.raises(ProfileError, match="suspenders.0.device names device 'ring_currant'"):
        load_profile(path)
    path = _broken(tmp_path, "resume_above = 250.0", "resume_above = 5.0")
    with pytest.raises(ProfileError, match=r"suspenders\.0: .*resume_above \(5\) is below"):
        load_profile(path)


def test_required_metadata_defaults_and_demo():
    metadata = load_profile("demo").metadata
    assert metadata.required_keys == ("facility", "beamline", "proposal", "sample", "operator")
    # Every required key has a default in the demo: hutch run and the demo need no md=.
    assert metadata.missing(metadata.model_dump(exclude_none=True)) == []
    assert "required" not in metadata.model_dump()  # a rule, not run metadata


def test_required_metadata_defaults_to_facility_and_beamline(tmp_path):
    path = _broken(tmp_path, 'required = ["proposal", "sample", "operator"]\n', "")
    metadata = load_profile(path).metadata
    assert metadata.required_keys == ("facility", "beamline")
    assert metadata.missing({"facility": "HUTCH", "beamline": " "}) == ["beamline"]


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ('"proposal", "smaple"', "unknown metadata key 'smaple': did you mean 'sample'?"),
        ('"sample name"', "'sample name' is not a metadata key"),
        ('""', "'' is not a metadata key"),
        ('"uid"', "'uid' is set by the RunEngine for every run"),
        ('"sample", "sample"', "'sample' is listed twice"),
        ("1", "Input should be a valid string"),
    ],
)
def test_invalid_required_metadata_names_file_and_line(tmp_path, entries, reason):
    path = _broken(
        tmp_path, 'required = ["proposal", "sample", "operator"]', f"required = [{entries}]"
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert f"{path}:{_line_of(path, 'required = [')}: metadata.required" in message
    assert reason in message


def test_required_metadata_may_name_the_beamlines_own_keys(tmp_path):
    path = _broken(
        tmp_path,
        'required = ["proposal", "sample", "operator"]',
        'required = ["sample", "temperature"]',
    )
    metadata = load_profile(path).metadata
    assert metadata.required_keys == ("facility", "beamline", "sample", "temperature")
    assert metadata.missing({"facility": "H", "beamline": "b", "sample": {}}) == [
        "sample",
        "temperature",
    ]
