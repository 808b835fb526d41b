"""``flopex``'s commands: :mod:`flopex.cli.main` holds the root group and the core commands, and
registers the groups of :mod:`flopex.cli.pool` and :mod:`flopex.cli.reserve`; :mod:`flopex.cli.common`
has what they share.
"""
