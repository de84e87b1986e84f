"""The embedded catalogue's server process: tiled's own ``tiled serve``, with its SQLite
free-text search made to scale and its DuckDB tables used by one thread at a time
(``python -m hutch.tiled_server serve config FILE ...``).

tiled 0.2.20 translates ``FullText`` on SQLite into a join of its FTS5 index with every node,
and SQLite then evaluates the MATCH once per node: 0.6-2.3 s per word over 10 000 runs here
(`hutch bench search`). Asking the index for its matching rows first and selecting nodes by
them gives the same result in about 1 ms. Worth reporting to tiled; delete this module (and
start ``python -m tiled`` again, `hutch.catalog`) once fixed there. PostgreSQL is left as
tiled translates it.

tiled 0.2.20 gives every thread of its server the same DuckDB connection (a StaticPool: DuckDB
takes no pool) and runs requests in parallel threads, so a read during a write interleaves
statements on that one connection. DuckDB then fails the read ("Attempting to execute an
unsuccessful or closed pending query result") and aborts the connection's transaction with
the writer's CREATE TABLE in it: the run's stream is registered but its table never exists,
and every later append to it fails with "Table ... does not exist". Seen as soon as the
recorder wrote derived runs while a client read the catalogue. `_serialized` holds the
connection for one thread from ``connect()`` to ``close()`` (tiled always uses it as
``with closing(storage.connect())``). Worth reporting to tiled; delete with the rest.
"""

from __future__ import annotations

import threading
from typing import Any

from sqlalchemy import select
from tiled.catalog import orm
from tiled.catalog.adapter import CatalogNodeAdapter, full_text
from tiled.commandline.main import main as tiled_main
from tiled.queries import FullText
from tiled.storage import SQLStorage

__all__ = ["main"]


def _full_text(query: FullText, tree: CatalogNodeAdapter) -> CatalogNodeAdapter:
    if tree.context.engine.url.get_dialect().name != "sqlite":
        return full_text(query, tree)
    fts = orm.metadata_fts5
    matching = select(fts.c.rowid).where(fts.c.metadata.match(query.text))
    return tree.new_variation(conditions=[*tree.conditions, orm.Node.id.in_(matching)])


# One DuckDB connection, one thread at a time; reentrant: a thread may nest connect().
_DUCKDB = threading.RLock()
_tiled_connect = SQLStorage.connect


class _Held:
    """tiled's pooled DuckDB connection, held by this thread until closed."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def close(self) -> None:
        try:
            self._connection.close()
        finally:
            _DUCKDB.release()


def _serialized(storage: SQLStorage) -> Any:
    if storage.dialect != "duckdb":
        return _tiled_connect(storage)
    _DUCKDB.acquire()
    try:
        return _Held(_tiled_connect(storage))
    except BaseException:
        _DUCKDB.release()
        raise


def main() -> None:
    """Run tiled's command line with hutch's FullText translation and DuckDB lock."""
    CatalogNodeAdapter.register_query(FullText, _full_text)
    SQLStorage.connect = _serialized  # type: ignore[method-assign]
    tiled_main()


if __name__ == "__main__":
    main()
