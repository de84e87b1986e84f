"""hutch's Channel Access server: caproto's asyncio server, with Nagle's algorithm off.

caproto (1.3) creates its listening socket with ``proto=0``, and asyncio only sets
``TCP_NODELAY`` on sockets whose ``proto`` is ``IPPROTO_TCP``, so every circuit of caproto's
asyncio server runs with Nagle's algorithm on. A put-callback reply that follows a monitor
update (the usual case: a putter updates a readback) then waits for the client's delayed ACK,
about 40 ms: put-callback averaged 22 ms instead of 0.7 ms (docs/performance.md has the
measurement). The C IOC's server (rsrv) sets ``TCP_NODELAY`` on every circuit; so does this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from caproto.asyncio.server import Context

__all__ = ["NoDelayContext", "run"]


class NoDelayContext(Context):
    """caproto's asyncio server context whose client circuits have TCP_NODELAY set."""

    async def server_accept_loop(self, sock: socket.socket) -> None:
        # Accepted sockets inherit TCP_NODELAY from the listening socket (Linux, BSD, macOS,
        # Windows), which spares re-implementing caproto's accept callback.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await super().server_accept_loop(sock)


def run(pvdb: dict[str, Any], interfaces: list[str]) -> None:
    """Serve ``pvdb`` on ``interfaces`` until interrupted (as ``caproto.asyncio.server.run``)."""

    async def serve() -> None:
        # The context must be created inside the running loop (caproto's queues bind to it).
        await NoDelayContext(pvdb, interfaces).run()

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: a normal shutdown
        asyncio.run(serve())
