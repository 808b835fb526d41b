"""``python -m flopex`` is the ``flopex`` command."""

from flopex.cli.main import main

main()
