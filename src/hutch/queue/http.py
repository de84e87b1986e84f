"""``python -m hutch.queue.http --config_path FILE``: bluesky-httpserver as hutch runs it.

It is bluesky-httpserver's own server (its app, configuration and uvicorn), with one change:
a caller whose API key is valid but lacks the permission for a call gets 403 Forbidden.
bluesky-httpserver 0.0.14 answers both that and a missing or wrong key with 401, so a client
cannot tell "log in" from "you may not"; HTTP (RFC 9110) reserves 401 for the first.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["ForbiddenWithoutPermission", "main"]

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

#: What bluesky-httpserver's 401 says when a scope is missing, and what it adds when the
#: caller has no scope at all (no key, or one it does not know): that one stays 401.
_NO_PERMISSION = b"Not enough permissions"
_NO_SCOPES = b"Request had scopes []"


class ForbiddenWithoutPermission:
    """ASGI middleware: bluesky-httpserver's 401 "Not enough permissions" for a caller that
    has scopes (a valid key) becomes 403.

    Only those answers are held back (to read their short JSON body); every other response
    streams through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                held.append(message)
                return
            if not held:
                await send(message)
                return
            held.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                start, *body = held
                text = b"".join(m.get("body", b"") for m in body)
                if _NO_PERMISSION in text and _NO_SCOPES not in text:
                    headers = [
                        (k, v) for k, v in start["headers"] if k.lower() != b"www-authenticate"
                    ]
                    start = {**start, "status": 403, "headers": headers}
                held.clear()
                for part in (start, *body):
                    await send(part)

        await self.app(scope, receive, relay)


def main(argv: list[str] | None = None) -> None:
    """Serve bluesky-httpserver with the configuration file at ``--config_path``."""
    import uvicorn
    from bluesky_httpserver.app import build_app
    from bluesky_httpserver.config import construct_build_app_kwargs, parse_configs

    parser = argparse.ArgumentParser(prog="python -m hutch.queue.http", description=main.__doc__)
    parser.add_argument("--config_path", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bluesky_httpserver").setLevel("INFO")
    config = parse_configs(args.config_path)
    server = config.pop("uvicorn", {})
    app = build_app(**construct_build_app_kwargs(config, source_filepath=args.config_path))
    uvicorn.run(ForbiddenWithoutPermission(app), **server)


if __name__ == "__main__":
    main()
