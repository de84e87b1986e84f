"""The queue server's processes: Redis, the RE Manager and the HTTP server.

``start`` brings up, for one profile, Redis (hutch's own ``redis-server`` on a free loopback
port, without persistence, unless ``HUTCH_QUEUE_REDIS`` names one), bluesky-queueserver's RE
Manager with a generated startup script, permissions and plan/device description file, and
bluesky-httpserver in front of it with one API key per user group of the profile. It opens the
worker environment and returns once everything answers. A state file under
``<data dir>/run/`` records what was started, so ``stop`` (any process) stops exactly that.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hutch import services
from hutch.config import Settings
from hutch.errors import HutchError
from hutch.profile import Profile
from hutch.queue.permissions import http_users, user_groups_yaml
from hutch.queue.startup import startup_script

__all__ = [
    "QueueError",
    "QueuePorts",
    "QueueState",
    "api_key",
    "queue_dir",
    "start",
    "status",
    "stop",
    "write_environment_error",
]

LOOPBACK = "127.0.0.1"
_PROVIDER = "hutch"  # the HTTP server's login provider for the groups' users
# API keys outlive restarts of the stack (its key database is kept); ten years.
_KEY_LIFETIME = 10 * 365 * 24 * 3600


class QueueError(HutchError, RuntimeError):
    """The queue server could not be started, reached or used."""


@dataclass(frozen=True)
class QueuePorts:
    """Where the queue server listens, from the environment.

    ``HUTCH_QUEUE_HOST`` (default 127.0.0.1) is the HTTP server's address; another one (or
    0.0.0.0) makes it reachable from other machines, still only with an API key.
    ``HUTCH_QUEUE_HTTP_PORT`` (60610), ``HUTCH_QUEUE_ZMQ_PORT`` (60615, the RE Manager's
    control socket, loopback only) and ``HUTCH_QUEUE_ZMQ_INFO_PORT`` (60625, its console
    output) default to bluesky-queueserver's own ports, so ``qserver`` works unchanged.
    ``HUTCH_QUEUE_REDIS`` (``host:port``) is an existing Redis to use instead of starting one.
    """

    http_host: str = LOOPBACK
    http_port: int = 60610
    zmq_port: int = 60615
    zmq_info_port: int = 60625
    redis: str | None = None

    @classmethod
    def from_env(cls) -> QueuePorts:
        """The ports and addresses from ``HUTCH_QUEUE_*`` environment variables."""
        env = os.environ
        return cls(
            http_host=env.get("HUTCH_QUEUE_HOST") or LOOPBACK,
            http_port=int(env.get("HUTCH_QUEUE_HTTP_PORT") or 60610),
            zmq_port=int(env.get("HUTCH_QUEUE_ZMQ_PORT") or 60615),
            zmq_info_port=int(env.get("HUTCH_QUEUE_ZMQ_INFO_PORT") or 60625),
            redis=env.get("HUTCH_QUEUE_REDIS") or None,
        )


@dataclass
class QueueState:
    """What ``start`` started for a profile and how to reach it (the state file's content)."""

    profile: str
    pids: dict[str, int]
    """Process ids by service: ``redis`` (only if hutch started it), ``manager``, ``http``."""
    redis: str
    zmq_control: str
    zmq_info: str
    http_uri: str
    directory: str
    groups: list[str] = field(default_factory=list)
    default_group: str = "admin"
    simulator: bool = False
    """Whether ``start`` started the profile's simulated beamline (``stop`` stops it then)."""

    @property
    def api_key(self) -> str:
        """The API key of the profile's default group (hutch's own)."""
        return (Path(self.directory) / "keys" / self.default_group).read_text().strip()


_MARKERS = {"redis": b"redis-server", "manager": b"start-re-manager", "http": b"httpserver"}


def queue_dir(profile_name: str, settings: Settings) -> Path:
    """The directory of a profile's queue server: generated files, logs, keys."""
    return settings.run_dir / f"queue-{profile_name}"


def _state_path(profile_name: str, settings: Settings) -> Path:
    return settings.run_dir / f"queue-{profile_name}.json"


def api_key(profile_name: str, settings: Settings, group: str) -> str:
    """The HTTP API key of ``group`` (written by ``start``, readable by the owner only)."""
    path = queue_dir(profile_name, settings) / "keys" / group
    try:
        return path.read_text().strip()
    except OSError:
        raise QueueError(f"no API key for group {group!r} at {path}: is the queue up?") from None


def status(profile_name: str, settings: Settings) -> QueueState | None:
    """The state of the profile's queue server if its RE Manager runs, else None."""
    raw = services.read_state(_state_path(profile_name, settings))
    if raw is None:
        return None
    try:
        state = QueueState(**raw)
    except TypeError:
        return None
    pid = state.pids.get("manager", 0)
    return state if services.process_alive(pid, marker=_MARKERS["manager"]) else None


def _stop_pids(pids: dict[str, int]) -> None:
    # The front first: the HTTP server, then the manager (and its worker), then Redis.
    for name in ("http", "manager", "redis"):
        pid = pids.get(name)
        if pid and services.process_alive(pid, marker=_MARKERS[name]):
            services.terminate(pid, timeout=15.0)


def stop(profile_name: str, settings: Settings) -> bool:
    """Stop what ``start`` started for the profile; False if nothing was running."""
    path = _state_path(profile_name, settings)
    raw = services.read_state(path)
    if raw is None:
        return False
    pids = {k: int(v) for k, v in (raw.get("pids") or {}).items()}
    running = any(
        services.process_alive(pid, marker=_MARKERS.get(name)) for name, pid in pids.items()
    )
    _stop_pids(pids)
    if raw.get("simulator"):
        from hutch import simulators

        simulators.stop(profile_name, settings)
    path.unlink(missing_ok=True)
    return running


def _check_port(host: str, port: int, what: str, variable: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise QueueError(
                f"cannot start the {what}: port {port} on {host} is in use; "
                f"set {variable} to a free port"
            ) from None


def _wait(
    what: str, ready, deadline: float, pid: int | None, log: Path | None, every: float = 0.05
) -> None:
    """Poll ``ready()`` until true; fail early, with the log's tail, if ``pid`` dies."""
    while True:
        try:
            if ready():
                return
        except QueueError:
            raise
        except Exception:  # not answering yet
            pass
        if pid is not None and not services.process_alive(pid):
            tail = services.log_tail(log) if log else ""
            raise QueueError(f"the {what} exited while starting; its log ({log}):\n{tail}")
        if time.monotonic() > deadline:
            tail = services.log_tail(log) if log else ""
            raise QueueError(f"the {what} did not become ready in time; its log ({log}):\n{tail}")
        time.sleep(every)


def _redis_ping(address: str) -> bool:
    import redis

    host, _, port = address.partition(":")
    client = redis.Redis(host=host, port=int(port or 6379), socket_timeout=2)
    try:
        return bool(client.ping())
    finally:
        client.close()


def _start_redis(directory: Path, deadline: float) -> tuple[str, int]:
    try:
        executable = services.system_program("redis-server")
    except services.MissingProgramError as exc:
        raise QueueError(
            f"the queue server needs Redis: {exc}; or set HUTCH_QUEUE_REDIS=host:port to use "
            "a running one"
        ) from None
    port = services.free_port()
    log = directory / "redis.log"
    # Loopback only, no persistence: the queue lives as long as this stack.
    command = [executable, "--port", str(port), "--bind", LOOPBACK, "--save", "",
               "--appendonly", "no", "--dir", str(directory), "--daemonize", "no"]  # fmt: skip
    proc = services.spawn_detached(command, log)
    address = f"{LOOPBACK}:{port}"
    _wait("Redis server", lambda: _redis_ping(address), deadline, proc.pid, log)
    return address, proc.pid


def _http_config(profile: Profile, ports: QueuePorts, zmq: tuple[str, str], directory: Path,
                 passwords: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    groups = list(profile.queue.groups)
    return {
        "qserver_zmq_configuration": {"control_address": zmq[0], "info_address": zmq[1]},
        "authentication": {
            "providers": [
                {
                    "provider": _PROVIDER,
                    # Its users are the profile's groups, their passwords generated per start:
                    # they only serve ``start`` to create the groups' API keys.
                    "authenticator": "bluesky_httpserver.authenticators:DictionaryAuthenticator",
                    "args": {"users_to_passwords": passwords},
                }
            ],
            "secret_keys": [secrets.token_hex(32)],
            "allow_anonymous_access": False,
        },
        "database": {"uri": f"sqlite:///{directory / 'httpserver.sqlite'}"},
        "api_access": {
            "policy": "bluesky_httpserver.authorization:DictionaryAPIAccessControl",
            "args": {"users": http_users(profile)},
        },
        "resource_access": {
            "policy": "hutch.queue.permissions:GroupResourceAccess",
            "args": {"groups": groups, "default_group": profile.queue.default_group},
        },
        "uvicorn": {"host": ports.http_host, "port": ports.http_port},
    }


def _ensure_keys(uri: str, directory: Path, passwords: dict[str, str]) -> None:
    """Keep each group's valid API key; create one where it is missing or no longer valid."""
    keys = directory / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    import httpx  # here: `hutch queue` commands other than up do without it

    with httpx.Client(base_url=uri, trust_env=False, timeout=30) as client:
        for group, password in passwords.items():
            path = keys / group
            with contextlib.suppress(OSError):
                key = path.read_text().strip()
                whoami = client.get("/api/auth/whoami", headers={"Authorization": f"ApiKey {key}"})
                if whoami.status_code == 200:
                    continue
            token = client.post(
                f"/api/auth/provider/{_PROVIDER}/token",
                data={"username": group, "password": password},
            )
            token.raise_for_status()
            response = client.post(
                "/api/auth/apikey",
                json={"expires_in": _KEY_LIFETIME, "note": f"hutch queue: group {group}"},
                headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            )
            response.raise_for_status()
            tmp = path.with_name(f".{group}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(response.json()["secret"] + "\n")
            tmp.replace(path)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def start(
    profile: Profile,
    settings: Settings,
    ports: QueuePorts | None = None,
    *,
    timeout: float = 180.0,
    simulator_port: int | None = None,
) -> QueueState:
    """Start the profile's queue server and open its worker environment (devices connected).

    With ``simulator_port`` the profile's simulated beamline is started first (on that port)
    unless it is up; ``stop`` stops it again. Returns the running state if the queue server
    is already up. On any failure what was started is stopped again and the error says what
    went wrong: devices that did not connect with their PVs, or the log to read.
    """
    current = status(profile.name, settings)
    if current is not None:
        return current
    stop(profile.name, settings)  # leftovers of a stack whose manager died
    if profile.path is None:
        raise QueueError(f"profile {profile.name!r} was not loaded from a file")
    ports = ports or QueuePorts.from_env()
    _check_port(ports.http_host, ports.http_port, "HTTP server", "HUTCH_QUEUE_HTTP_PORT")
    _check_port(LOOPBACK, ports.zmq_port, "RE Manager", "HUTCH_QUEUE_ZMQ_PORT")
    _check_port(LOOPBACK, ports.zmq_info_port, "RE Manager", "HUTCH_QUEUE_ZMQ_INFO_PORT")
    deadline = time.monotonic() + timeout
    directory = queue_dir(profile.name, settings)
    directory.mkdir(parents=True, exist_ok=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)

    pids: dict[str, int] = {}
    simulator = False
    _environment_error(directory).unlink(missing_ok=True)
    try:
        if simulator_port is not None:
            from hutch import simulators

            if simulators.status(profile.name, settings) is None:
                simulators.start(profile, simulator_port, settings)
                simulator = True
        if ports.redis:
            redis_addr = ports.redis
            _wait("Redis server at HUTCH_QUEUE_REDIS", lambda: _redis_ping(redis_addr),
                  deadline, None, None)  # fmt: skip
        else:
            redis_addr, pids["redis"] = _start_redis(directory, deadline)

        # The generated startup, permissions and the plan/device description the manager
        # writes when its environment opens (kept from the last run until then).
        startup = directory / "startup.py"
        startup.write_text(startup_script(profile.path.resolve(), settings.data_dir))
        permissions = directory / "user_group_permissions.yaml"
        permissions.write_text(user_groups_yaml(profile))
        existing = directory / "existing_plans_and_devices.yaml"
        zmq = (f"tcp://{LOOPBACK}:{ports.zmq_port}", f"tcp://{LOOPBACK}:{ports.zmq_info_port}")
        manager_log = directory / "manager.log"
        bindir = Path(sys.executable).parent
        command = [
            str(bindir / "start-re-manager"),
            "--zmq-control-addr", zmq[0],
            "--zmq-info-addr", zmq[1],
            "--zmq-publish-console", "ON",
            "--startup-script", str(startup),
            "--existing-plans-devices", str(existing),
            "--update-existing-plans-devices", "ENVIRONMENT_OPEN",
            "--user-group-permissions", str(permissions),
            "--user-group-permissions-reload", "ON_STARTUP",
            "--redis-addr", redis_addr,
            # One queue per profile, even in a shared Redis.
            "--redis-name-prefix", f"hutch_{profile.name}",
        ]  # fmt: skip
        env = dict(os.environ, HUTCH_DATA_DIR=str(settings.data_dir))
        env["HUTCH_CATALOG_PORT"] = str(settings.catalog_port)
        env["HUTCH_CATALOG_HOST"] = settings.catalog_host
        manager = services.spawn_detached(command, manager_log, env=env)
        pids["manager"] = manager.pid

        passwords = {group: secrets.token_hex(16) for group in profile.queue.groups}
        config = directory / "httpserver.yml"
        http_config = _http_config(profile, ports, zmq, directory, passwords)
        _write_private(config, json.dumps(http_config, indent=2))
        http_log = directory / "httpserver.log"
        http = services.spawn_detached(
            [sys.executable, "-m", "hutch.queue.http", "--config_path", str(config)],
            http_log,
            env=env,
            log_mode=0o600,
        )
        pids["http"] = http.pid
        address = LOOPBACK if ports.http_host in ("0.0.0.0", "::", "") else ports.http_host
        http_uri = f"http://{address}:{ports.http_port}"

        state = QueueState(
            profile=profile.name,
            pids=pids,
            redis=redis_addr,
            zmq_control=zmq[0],
            zmq_info=zmq[1],
            http_uri=http_uri,
            directory=str(directory),
            groups=list(profile.queue.groups),
            default_group=profile.queue.default_group,
            simulator=simulator,
        )
        services.write_state(_state_path(profile.name, settings), asdict(state))

        from hutch.queue.client import manager_api

        def http_answers() -> bool:
            import httpx  # (see _ensure_keys)

            with httpx.Client(trust_env=False, timeout=5) as client:
                return client.get(f"{http_uri}/api").status_code < 500

        api = manager_api(state)
        try:
            _wait("RE Manager", lambda: api.status()["manager_state"] == "idle", deadline,
                  manager.pid, manager_log)  # fmt: skip
            if not api.status()["worker_environment_exists"]:
                api.environment_open()
            # While the worker opens its environment (its imports and the devices' connection,
            # the longest part), the HTTP server comes up and the groups' keys are made.
            _wait("HTTP server", http_answers, deadline, http.pid, http_log)
            _ensure_keys(http_uri, directory, passwords)
            _wait("RE Manager's environment (connecting the devices)",
                  lambda: _environment_ready(api, profile, settings), deadline, manager.pid,
                  manager_log)  # fmt: skip
        finally:
            api.close()
        return state
    except BaseException:
        _stop_pids(pids)
        if simulator:
            from hutch import simulators

            simulators.stop(profile.name, settings)
        _state_path(profile.name, settings).unlink(missing_ok=True)
        raise


def _environment_error(directory: Path) -> Path:
    """Where the worker's startup writes why the environment could not open (one text)."""
    return directory / "environment-error.txt"


def write_environment_error(profile_name: str, settings: Settings, message: str) -> None:
    """Called by the worker's startup when it fails: ``start`` reports ``message``."""
    _environment_error(queue_dir(profile_name, settings)).write_text(message)


def _environment_ready(api, profile: Profile, settings: Settings) -> bool:
    status = api.status()
    if status["manager_state"] == "idle" and not status["worker_environment_exists"]:
        directory = queue_dir(profile.name, settings)
        try:
            reason = _environment_error(directory).read_text().strip()
        except OSError:
            reason = f"see its log, {directory / 'manager.log'}"
        hint = ""
        from hutch import simulators

        if "did not connect" in reason and simulators.status(profile.name, settings) is None:
            hint = (
                f"\nIs the beamline up? The simulated one: hutch queue up --sim (or hutch sim "
                f"up --detach --profile {profile.name})"
            )
        raise QueueError(f"the RE Manager could not open its environment: {reason}{hint}")
    return status["worker_environment_exists"] and status["manager_state"] == "idle"
