"""``hutch shell``: the beamline's IPython session.

One command gives a user the profile's devices (connected; the ones that are not are listed,
not fatal), its plans, bluesky's plan stubs as ``bps``, the session's RunEngine as ``RE``,
recent runs as ``catalog`` (``catalog[-1]``), ``proposal(...)``/``sample(...)``/
``operator(...)`` kept across sessions, and the magics of `hutch.magics` (``%wa``, ``%mov``,
``%movr``, ``%ct``); with a display, live plots of every run in a process of their own
(`hutch.liveplot`). ``hutch shell`` (``hutch.cli``) calls `run_shell`.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import bluesky.plan_stubs as bps
import bluesky.plans as bp
from bluesky import RunEngine

from hutch import plans, simulators
from hutch.ca import configure_ca_client
from hutch.config import Settings
from hutch.positions import pv_summary
from hutch.profile import Profile, load_profile
from hutch.session import Session, metadata_store

if TYPE_CHECKING:
    from hutch.liveplot import LivePlots

__all__ = ["LazyCatalog", "MetadataSetter", "ShellNamespace", "build_namespace", "run_shell"]

#: Seconds the shell waits for all devices together before listing the missing ones.
CONNECT_TIMEOUT = 5.0


class MetadataSetter:
    """``proposal("p-1")`` sets ``RE.md["proposal"]`` for every following run (a session with
    persisted metadata keeps it for the next one); ``proposal()`` returns it.

    Keyword arguments make a record: ``sample("LaB6", formula="LaB6", temperature=295)`` sets
    ``{"name": "LaB6", "formula": "LaB6", "temperature": 295}`` (NeXus: NXsample fields).
    """

    def __init__(self, RE: RunEngine, key: str) -> None:
        self.RE = RE
        self.key = key

    def __call__(self, value: Any = None, **details: Any) -> Any:
        if value is None and not details:
            return self.RE.md.get(self.key)
        new = {"name": value, **details} if details else value
        # Assigned, not mutated: a PersistentDict writes an item to disk on assignment only.
        self.RE.md[self.key] = new
        print(f"RE.md[{self.key!r}] = {new!r}")
        return None

    def __repr__(self) -> str:
        return f"{self.key}(...) sets RE.md[{self.key!r}], now {self.RE.md.get(self.key)!r}"


class LazyCatalog:
    """``catalog`` in the shell: the session's catalogue of runs (`Session.runs_container`,
    ``catalog[-1]``, ``catalog[uid]``), connected on first use. The tiled client it needs
    costs seconds of imports, which the shell's start-up does without; whatever is asked of
    this object is asked of the catalogue."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def _connected(self) -> Any:
        return self._session.runs_container  # connects once, then cached by the session

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_session":  # copy, pickle: not the catalogue's
            raise AttributeError(name)
        return getattr(self._connected(), name)

    def __getitem__(self, key: Any) -> Any:
        return self._connected()[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._connected()

    def __iter__(self) -> Any:
        return iter(self._connected())

    def __len__(self) -> int:
        return len(self._connected())

    def __dir__(self) -> list[str]:
        return dir(self._connected())

    def __repr__(self) -> str:
        return repr(self._connected())


@dataclass
class ShellNamespace:
    """What ``hutch shell`` puts in IPython: the namespace, the banner, and the session."""

    namespace: dict[str, Any]
    banner: str
    session: Session
    live_plots: bool
    plots: LivePlots | None = None
    """The live plots subscribed to the session's RunEngine (with ``live_plots``)."""


def _plans(profile: Profile) -> dict[str, Callable]:
    return {name: getattr(plans, name) for name in profile.plans}


def build_namespace(
    profile: Profile,
    settings: Settings,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    live_plots: bool = False,
    no_plots_reason: str = "no display",
    out: TextIO = sys.stdout,
) -> ShellNamespace:
    """Build the session (devices connected within ``connect_timeout``, failures kept, RE.md
    persisted under the data directory) and the shell's namespace and banner.

    Channel Access must be configured before (`configure_channel_access`); with
    ``live_plots`` every run is also drawn live, in a process of its own (`hutch.liveplot`;
    it needs a display), started at the first run; without, the banner gives
    ``no_plots_reason``.
    """
    print(
        f"hutch shell: profile {profile.name!r}: connecting {len(profile.devices)} devices "
        f"(at most {connect_timeout:g} s) ...",
        file=out,
        flush=True,
    )
    session = Session(
        profile,
        settings,
        connect_timeout=connect_timeout,
        raise_on_failure=False,
        persist_md=True,
    )
    RE = session.RE
    plots = None
    if live_plots:
        from hutch.liveplot import LivePlots

        plots = LivePlots(settings.run_dir / f"liveplot-{os.getpid()}.log")
        RE.subscribe(plots)
    own: dict[str, Any] = {
        "RE": RE,
        "session": session,
        "devices": session.devices,
        "profile": profile,
        "catalog": LazyCatalog(session) if session.catalog else None,
        "bps": bps,
        "bp": bp,
        **{key: MetadataSetter(RE, key) for key in ("proposal", "sample", "operator")},
    }
    offered = _plans(profile)
    namespace: dict[str, Any] = {**offered, **session.devices, **own}
    # The shell's own names win (a device called RE would break the shell); say which lost.
    shadowed = sorted((set(offered) & set(session.devices)) | (set(own) & set(session.devices)))
    shadowed += sorted(set(offered) & set(own))
    banner = _banner(session, offered, shadowed, None if live_plots else no_plots_reason)
    return ShellNamespace(namespace, banner, session, live_plots, plots)


def _wrap(label: str, text: str) -> str:
    # Lists are wrapped; paths and URIs are never broken, so they can be copied.
    return textwrap.fill(
        text,
        width=100,
        initial_indent=f"  {label:10} ",
        subsequent_indent=" " * 13,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _banner(
    session: Session, offered: dict[str, Callable], shadowed: list[str], no_plots: str | None
) -> str:
    profile, settings, md = session.profile, session.settings, session.RE.md
    failed = session.connection_failures
    connected = [name for name in session.devices if name not in failed]
    lines = [
        f"hutch shell: {profile.name!r} ({profile.title or profile.name}), "
        f"data in {settings.data_dir}",
        _wrap("devices", f"{len(connected)} connected: {' '.join(connected)}"),
    ]
    if failed:
        lines.append(
            f"  NOT CONNECTED ({len(failed)}; in the namespace, unusable until connected: "
            "session.connect(raise_on_failure=False) retries):"
        )
        for name, pvs in failed.items():
            lines.append(f"    {name}: missing PVs {pv_summary(pvs)}")
    skipped = [s for s in profile.suspenders if s.device in failed]
    if session.suspenders or skipped:
        installed = [s for s in profile.suspenders if s.device not in failed]
        text = ", ".join(f"{s.device}.{s.signal} < {s.below:g}" for s in installed) or "none"
        if skipped:
            text += "; NOT installed: " + ", ".join(f"{s.device}.{s.signal}" for s in skipped)
        lines.append(_wrap("suspend", text))
    lines += [
        _wrap("plans", " ".join(offered) + "   (stubs: bps.mv, bps.rd, ...; bp: bluesky.plans)"),
        _wrap("RE", "RE(plan(...)): live table, NeXus file, plot and catalogue entry per run"),
        _wrap("magics", "%wa  %mov dev value ...  %movr dev delta ...  %ct [dets]"),
    ]
    if session.catalog is not None:
        lines.append(
            _wrap("catalog", f"catalog[-1], catalog[uid], catalog[scan_id]: {session.catalog.uri}")
        )
    now = ", ".join(f"{key}={md.get(key)!r}" for key in ("proposal", "sample", "operator"))
    lines.append(
        _wrap(
            "metadata",
            f"proposal(...), sample(...), operator(...) set RE.md, kept in "
            f"{metadata_store(settings, profile.name)}; now {now}",
        )
    )
    where = f"PNGs in {settings.plot_dir}"
    live = f"live windows (a process of their own) and {where}"
    lines.append(_wrap("plots", live if no_plots is None else f"{where} ({no_plots})"))
    if shadowed:
        lines.append(
            _wrap(
                "shadowed", "device or plan names hidden by the shell's own: " + ", ".join(shadowed)
            )
        )
    return "\n".join(lines) + "\n"


def configure_channel_access(
    profile: Profile, settings: Settings, port: int | None = None, *, start_simulator: bool = False
) -> str:
    """Point this process's CA clients at the beamline, as ``hutch run`` does: the running
    simulator's IOCs, else (``start_simulator``) a simulator started now that ends with this
    process, else the caller's own EPICS environment, else the simulator port. Says which."""
    port = port or settings.ca_port or profile.simulation.port
    state = simulators.status(profile.name, settings)
    if state is None and start_simulator:
        state = simulators.start(profile, port, settings, exit_with=os.getpid())
        configure_ca_client(*state.ports)
        return f"simulator started (stops with this shell): {simulators.describe(state)}"
    if state is not None:
        configure_ca_client(*state.ports)
        return f"simulator running: {simulators.describe(state)}"
    if "EPICS_CA_ADDR_LIST" in os.environ:
        return f"Channel Access from the environment: {os.environ['EPICS_CA_ADDR_LIST']}"
    configure_ca_client(port)
    return f"Channel Access on 127.0.0.1:{port}"


def ipython_config(banner: str) -> Any:
    """The IPython configuration of ``hutch shell``: hutch's magics, the banner, and
    completion by ``dir()`` (jedi's static analysis misses children ophyd-async devices make
    in ``__init__``). No GUI event loop: the live plots are drawn in a process of their own."""
    from traitlets.config import Config

    config = Config()
    config.InteractiveShellApp.extensions = ["hutch.magics"]
    config.TerminalInteractiveShell.banner2 = banner
    config.IPCompleter.use_jedi = False
    return config


def run_shell(
    profile: str,
    data_dir: str | None = None,
    *,
    sim: bool = False,
    port: int | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    plots: bool = True,
    ipython_argv: Sequence[str] = (),
) -> int:
    """Start ``hutch shell``: CA set up, session built, IPython until the user exits; then the
    live plots end and the session's recorder finishes writing and stops. ``plots`` (and a
    display, `hutch.liveplot.display_available`) draws every run live."""
    import IPython

    if "MPLBACKEND" not in os.environ:
        import matplotlib

        # This process draws nothing (the live plots are another process's): with a GUI
        # backend bluesky's live table would become a Qt callback, and Qt aborts the process
        # where its X libraries are missing. ``%matplotlib`` switches, for one's own figures.
        matplotlib.use("agg")
    loaded = load_profile(profile)
    settings = Settings.from_env(data_dir)
    print(configure_channel_access(loaded, settings, port, start_simulator=sim), flush=True)
    from hutch.liveplot import display_available

    live_plots = plots and display_available()
    shell = build_namespace(
        loaded,
        settings,
        connect_timeout=connect_timeout,
        live_plots=live_plots,
        no_plots_reason="no display" if plots else "--no-plots",
    )
    try:
        IPython.start_ipython(
            argv=list(ipython_argv),
            user_ns=shell.namespace,
            config=ipython_config(shell.banner),
        )
    finally:
        if shell.plots is not None:
            shell.plots.close()
        shell.session.close()
    return 0
