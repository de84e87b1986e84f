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
    }
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
    path = _broken(tmp_path, '"align"]', '"align", "teleport"]')
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
