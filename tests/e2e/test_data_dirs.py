"""Daemons started in one folder: each account its own data folder, and one live daemon per folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flopex.cli.common import hold_data_dir
from marketplace.chain.client import dev_account
from marketplace.errors import ConfigError
from tests.e2e.procs import FLOPEX, Proc, start_chain

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPEX, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


def test_hold_data_dir__a_folder_held_by_a_live_process_is_refused_and_freed_when_it_dies(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from flopex.cli.common import hold_data_dir; from pathlib import Path; "
            f"hold_data_dir(Path({str(folder)!r}), 'provider'); print('held', flush=True); input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by a running daemon \(provider pid {holder.pid}\)"):
            hold_data_dir(folder, "provider")
    finally:
        holder.kill()
        holder.wait()
    assert hold_data_dir(folder, "verifier") == folder  # the dead holder's lock went with it


@pytest.mark.slow
def test_readme_recipe__two_providers_in_one_folder__get_a_data_folder_each_and_a_third_is_refused(
    tmp_path: Path, has_bwrap: bool
) -> None:
    home = tmp_path
    chain, _ = start_chain(home)
    procs: list[Proc] = []
    try:
        for dev, price in ((4, "0.2"), (5, "0.3")):  # the README's recipe, no --data-dir
            proc = Proc(["provider", "start", "--dev", str(dev), "--price", price], home, home / f"p{dev}.log")
            procs.append(proc)
        for proc in procs:
            proc.wait_for_line("serving", timeout=120)
        for dev in (4, 5):
            assert (home / f"provider-{dev_account(dev).address}" / "daemon.lock").is_file()
        assert not (home / "provider").exists()

        again = _run(home, "provider", "start", "--dev", "4")
        assert again.returncode == 1
        folder = home / f"provider-{dev_account(4).address}"
        assert again.stderr == (
            f"error: {folder} is in use by a running daemon (provider pid {procs[0].process.pid}); "
            "give this provider a --data-dir of its own\n"
        )
        assert all(p.process.poll() is None for p in procs)  # the refusal harmed neither

        verifier = Proc(["verifier", "start", "--dev", "3"], home, home / "v.log")
        procs.append(verifier)
        verifier.wait_for_line("watching market", timeout=120)
        second = _run(home, "verifier", "start", "--dev", "3")
        assert second.returncode == 1 and second.stderr.count("\n") == 1
        assert f"verifier-{dev_account(3).address} is in use by a running daemon (verifier pid" in second.stderr
    finally:
        codes = [p.stop() for p in reversed(procs)]
        chain.stop()
    assert codes == [0, 0, 0]
    for dev in (4, 5):
        assert (home / f"provider-{dev_account(dev).address}" / "provider-state.json").is_file()
