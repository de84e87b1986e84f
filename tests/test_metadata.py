"""Run metadata: who, what and where in every start document; a run without it is refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine
from bluesky.preprocessors import run_decorator
from bluesky.run_engine import get_bluesky_event_loop
from sessions import bare_profile, offline_session

from hutch import plans
from hutch.ca import ca_client_env
from hutch.catalog import runs_container
from hutch.config import Settings
from hutch.session import MissingMetadataError

DEMO = Path(__file__).resolve().parents[1] / "profiles" / "demo.toml"
IDENTITY = ("facility", "beamline", "proposal", "sample", "operator")


def _no_default_sample(tmp_path: Path, name: str = "demo") -> Path:
    """The demo profile as a real beamline has it: sample required, no default sample."""
    text = DEMO.read_text()
    assert 'sample = "demo sample"\n' in text
    path = tmp_path / f"{name}.toml"
    path.write_text(
        text.replace('sample = "demo sample"\n', "").replace('name = "demo"', f'name = "{name}"')
    )
    return path


def test_start_document_carries_who_what_where(session):
    RE, d = session.RE, session.devices
    (uid,) = RE(plans.count([d["det"]], num=1, md={"sample": "Si wafer"})).run_start_uids
    start = session.runs_container[uid].metadata["start"]
    assert {key: start[key] for key in IDENTITY} == {
        "facility": "HUTCH",
        "beamline": "demo",
        "proposal": "commissioning",
        "sample": "Si wafer",  # the plan's md over the profile's default
        "operator": "beamline staff",
    }
    # Without md: the profile's default sample.
    (uid,) = RE(plans.count([d["det"]], num=1)).run_start_uids
    assert session.runs_container[uid].metadata["start"]["sample"] == "demo sample"


def test_run_missing_required_metadata_is_refused_before_it_starts(session):
    RE, d = session.RE, session.devices
    nexus_files = set(session.settings.nexus_dir.rglob("*"))
    catalogued = len(session.runs_container)
    runs = len(session.runs)
    emitted: list[str] = []
    token = RE.subscribe(lambda name, doc: emitted.append(name))
    sample = RE.md.pop("sample")
    try:
        with pytest.raises(MissingMetadataError) as info:
            RE(plans.count([d["det"]], num=1))
        assert info.value.missing == ["sample"]
        message = str(info.value)
        assert "required metadata missing: sample." in message
        assert "RE.md['sample'] = ..." in message and "md={'sample': ...}" in message
        assert str(session.profile.path) in message

        # Blank counts as missing; every missing field is named.
        with pytest.raises(MissingMetadataError) as info:
            RE(plans.count([d["det"]], num=1, md={"operator": " ", "proposal": None}))
        assert info.value.missing == ["proposal", "sample", "operator"]
        assert "md={'proposal': ..., 'sample': ..., 'operator': ...}" in str(info.value)
        assert RE.state == "idle"

        assert emitted == []  # not even a start document
        assert len(session.runs) == runs
        assert len(session.runs_container) == catalogued
        assert set(session.settings.nexus_dir.rglob("*")) == nexus_files

        # The plan's md (or RE(plan, **md)) supplies what the session lacks.
        result = RE(plans.count([d["det"]], num=1, md={"sample": "Si"}))
        assert result.exit_status == "success"
        result = RE(plans.count([d["det"]], num=1), sample="Ge")
        assert result.exit_status == "success"
        assert emitted.count("start") == 2
    finally:
        RE.md["sample"] = sample
        RE.unsubscribe(token)


def test_validator_chains_with_the_run_engines_own_and_is_put_back(tmp_path):
    """A RunEngine brought by its owner (tests, the queue server) keeps its validator."""
    seen: list[dict] = []

    def owners(md):
        seen.append(md)
        if md.get("sample") == "forbidden":
            raise ValueError("the owner's validator says no")

    RE = RunEngine({}, loop=get_bluesky_event_loop(), md_validator=owners)
    profile = bare_profile(tmp_path, "bare")
    session = offline_session(profile, Settings(data_dir=tmp_path / "data"), RE=RE)

    def run(**md):
        @run_decorator(md=md)
        def empty():
            yield from bps.null()

        return RE(empty())

    try:
        with pytest.raises(MissingMetadataError, match="sample"):
            run()
        assert seen == []  # refused first: the owner's validator had nothing to judge
        run(sample="Si")
        assert seen[-1]["sample"] == "Si" and seen[-1]["beamline"] == "bare"
        with pytest.raises(ValueError, match="owner's validator says no"):
            run(sample="forbidden")
    finally:
        session.close()
    assert RE.md_validator is owners
    run()  # hutch's requirement went with the session


def test_hutch_run_takes_metadata_on_the_command_line(session, sim, tmp_path):
    """``hutch run --md sample=...`` on a profile with no default sample."""
    profile = _no_default_sample(tmp_path, "metadata-cli")
    env = {
        **os.environ,
        **ca_client_env(*sim.ports),
        "HUTCH_DATA_DIR": str(session.settings.data_dir),
        "HUTCH_CATALOG_PORT": str(session.settings.catalog_port),
        "HUTCH_CA_PORT": str(sim.port),
    }

    def hutch(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hutch.cli", "run", *args, "--profile", str(profile)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    refused = hutch("count", "[det]", "-q")
    assert refused.returncode == 2
    assert "required metadata missing: sample." in refused.stderr
    assert "--md sample=..." in refused.stderr
    assert refused.stdout == ""

    proc = hutch("count", "[det]", "-q", "--md", "sample=Si 111", "--md", "operator=ada")
    assert proc.returncode == 0, proc.stderr
    uid = proc.stdout.strip().splitlines()[-1]
    start = runs_container(session.catalog, "metadata-cli")[uid].metadata["start"]
    assert start["sample"] == "Si 111" and start["operator"] == "ada"
    assert len(runs_container(session.catalog, "metadata-cli")) == 1  # the refused run: none
