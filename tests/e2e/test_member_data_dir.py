"""`flopex pool member start` takes the data-folder lock providers take: one live daemon per folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.chain.client import dev_account
from tests.e2e.procs import FLOPEX

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
POOL = "0x" + "ab" * 20


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPEX, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


def _hold(folder: Path, role: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from flopex.cli.common import hold_data_dir; from pathlib import Path; "
            f"hold_data_dir(Path({str(folder)!r}), {role!r}); print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_member_start__refuses_a_folder_a_live_daemon_holds_by_default_and_by_flag(tmp_path: Path) -> None:
    home = tmp_path
    default = home / f"member-{dev_account(4).address}"
    holder = _hold(default, "provider")
    try:
        refused = _run(home, "pool", "member", "start", POOL, "--dev", "4")
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: {default} is in use by a running daemon (provider pid {holder.pid}); "
            "give this pool member a --data-dir of its own\n"
        )
        other = home / "elsewhere"
        held_too = _hold(other, "pool member")
        try:
            flagged = _run(home, "pool", "member", "start", POOL, "--dev", "5", "--data-dir", str(other))
            assert flagged.returncode == 1
            assert f"in use by a running daemon (pool member pid {held_too.pid})" in flagged.stderr
        finally:
            held_too.kill()
            held_too.wait()
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone the folder is taken (and the command goes on to look for the chain).
    after = _run(home, "pool", "member", "start", POOL, "--dev", "4")
    assert after.returncode == 1 and "in use by a running daemon" not in after.stderr
    assert (default / "daemon.lock").read_text().startswith("pool member pid ")
