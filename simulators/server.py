"""hutch's Channel Access server: caproto's asyncio server, with two latency fixes.

caproto (1.3) creates its listening socket with ``proto=0``, and asyncio only sets
``TCP_NODELAY`` on sockets whose ``proto`` is ``IPPROTO_TCP``, so every circuit of caproto's
asyncio server runs with Nagle's algorithm on. A put-callback reply that follows a monitor
update (the usual case: a putter updates a readback) then waits for the client's delayed ACK,
about 40 ms: put-callback averaged 22 ms instead of 0.7 ms (docs/performance.md has the
measurement). The C IOC's server (rsrv) sets ``TCP_NODELAY`` on every circuit; so does this one.

Every read (``ReadNotifyRequest``) first waits up to 1 ms for a write in progress on its circuit,
through ``asyncio.wait_for`` even when no write is in progress: a task and a timer per read and
three extra event-loop turns, ~40 us of the server's ~300 us CPU per read. Circuits here skip
the wait when the event is already set, as caproto itself does for ``EventAddRequest``. The
server runs on uvloop (another ~25 us per read).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvloop
from caproto.asyncio.server import AsyncioEvent, Context, VirtualCircuit

__all__ = ["NoDelayContext", "run"]


class _WriteEvent(AsyncioEvent):
    """caproto's event with timeout, whose ``wait`` returns at once when it is set."""

    async def wait(self, timeout: float | None = None) -> bool:
        if self.is_set():  # no write in progress: skip asyncio.wait_for's task and timer
            return True
        return await super().wait(timeout)


class _Circuit(VirtualCircuit):
    """caproto's asyncio circuit whose reads do not yield to the loop when no write is on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.write_event = _WriteEvent()


class NoDelayContext(Context):
    """caproto's asyncio server context: TCP_NODELAY circuits whose reads skip an idle wait."""

    CircuitClass = _Circuit

    async def server_accept_loop(self, sock: socket.socket) -> None:
        # Accepted sockets inherit TCP_NODELAY from the listening socket (Linux, BSD, macOS,
        # Windows), which spares re-implementing caproto's accept callback.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await super().server_accept_loop(sock)


def run(
    pvdb: dict[str, Any],
    interfaces: list[str],
    tasks: Sequence[Callable[[], Awaitable[None]]] = (),
) -> None:
    """Serve ``pvdb`` on ``interfaces`` until interrupted (as ``caproto.asyncio.server.run``),
    running ``tasks`` (e.g. CA links to other IOCs) on the same event loop."""

    async def serve() -> None:
        # The context must be created inside the running loop (caproto's queues bind to it).
        context = NoDelayContext(pvdb, interfaces)
        for task in tasks:
            await task()
        await context.run()

    # Ctrl-C or SIGTERM: a normal shutdown
    with (
        contextlib.suppress(KeyboardInterrupt),
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(serve())
