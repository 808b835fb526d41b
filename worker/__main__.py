"""``python -m worker`` is ``python -m worker.serve``."""

from worker.serve import main

raise SystemExit(main())
