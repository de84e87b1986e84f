"""The embedded catalogue's server process: tiled's own ``tiled serve``, with its SQLite
free-text search made to scale (``python -m hutch.tiled_server serve config FILE ...``).

tiled 0.2.20 translates ``FullText`` on SQLite into a join of its FTS5 index with every node,
and SQLite then evaluates the MATCH once per node: 0.6-2.3 s per word over 10 000 runs here
(`hutch bench search`). Asking the index for its matching rows first and selecting nodes by
them gives the same result in about 1 ms. Worth reporting to tiled; delete this module (and
start ``python -m tiled`` again, `hutch.catalog`) once fixed there. PostgreSQL is left as
tiled translates it.
"""

from __future__ import annotations

from sqlalchemy import select
from tiled.catalog import orm
from tiled.catalog.adapter import CatalogNodeAdapter, full_text
from tiled.commandline.main import main as tiled_main
from tiled.queries import FullText

__all__ = ["main"]


def _full_text(query: FullText, tree: CatalogNodeAdapter) -> CatalogNodeAdapter:
    if tree.context.engine.url.get_dialect().name != "sqlite":
        return full_text(query, tree)
    fts = orm.metadata_fts5
    matching = select(fts.c.rowid).where(fts.c.metadata.match(query.text))
    return tree.new_variation(conditions=[*tree.conditions, orm.Node.id.in_(matching)])


def main() -> None:
    """Run tiled's command line with hutch's FullText translation registered."""
    CatalogNodeAdapter.register_query(FullText, _full_text)
    tiled_main()


if __name__ == "__main__":
    main()
