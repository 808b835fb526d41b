"""The flopex web console: a read-only view of one market (``flopex console``, ``flopex demo --console``).

:mod:`flopex.console.ledger` indexes the contracts' logs (incrementally, cached in SQLite),
:mod:`flopex.console.reader` turns them and the contracts' views into what the pages show, and
:mod:`flopex.console.app` is the Starlette application; :mod:`flopex.console.server` runs it on
uvicorn. See docs/console.md.
"""
