"""The house's one rule of dependencies: ``worker`` imports ``marketplace``, never the reverse.

The command line and the demo start workers, so they load ``worker`` inside the commands that need
it; every other module of ``marketplace`` must import without it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import marketplace

ENTRY_POINTS = {"marketplace.cli", "marketplace.demo", "marketplace.pool_cli"}


def test_marketplace_modules__import_without_the_worker() -> None:
    modules = sorted(
        m.name for m in pkgutil.walk_packages(marketplace.__path__, "marketplace.")
        if m.name not in ENTRY_POINTS and not m.name.endswith(("_pb2", "_pb2_grpc"))
    )
    assert len(modules) > 15
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.'))\n"
        "print(','.join(leaked))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_entry_points__load_the_worker_only_when_a_command_runs() -> None:
    code = "import sys, marketplace.cli, marketplace.demo; print(any(m.startswith('worker') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
