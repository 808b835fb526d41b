"""Helpers for tests that run flopex as separate processes on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from marketplace.chain.anvil import free_port, wait_for_port

FLOPEX = [sys.executable, "-m", "flopex"]


class Proc:
    """A flopex command running in the background, its output in a log file."""

    def __init__(self, args: list[str], home: Path, log: Path) -> None:
        self.log = log
        env = {**os.environ, "FLOPEX_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        self.handle = log.open("w")
        self.process = subprocess.Popen([*FLOPEX, *args], stdout=self.handle, stderr=subprocess.STDOUT, env=env)

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        """Wait until the log has a line containing ``text``; return that line."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if text in line:
                    return line
            if self.process.poll() is not None:
                raise AssertionError(f"process exited ({self.process.returncode}):\n{self.log.read_text()}")
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} after {timeout:.0f} s:\n{self.log.read_text()}")

    def stop(self, sig: str = "term") -> int:
        """Stop it (SIGTERM, or SIGKILL with ``sig='kill'``) and return its exit status."""
        if self.process.poll() is None:
            self.process.kill() if sig == "kill" else self.process.terminate()
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running 60 s after SIG{sig.upper()}:\n{self.log.read_text()}") from None
        finally:
            self.handle.close()
        return code


def start_chain(home: Path) -> tuple[Proc, str]:
    """``flopex chain up`` on a free port; returns it and its URL."""
    port = free_port()
    proc = Proc(["chain", "up", "--port", str(port)], home, home / "chain.log")
    wait_for_port(port, timeout=90)
    proc.wait_for_line("dev accounts")
    return proc, f"http://127.0.0.1:{port}"


def start_provider(home: Path, dev: int, price: str, *extra: str) -> tuple[Proc, str]:
    """``flopex provider start`` for dev account ``dev``; returns it and its provider address."""
    proc = Proc(
        ["provider", "start", "--dev", str(dev), "--price", price, "--data-dir", str(home / f"provider-{dev}"), *extra],
        home,
        home / f"provider-{dev}.log",
    )
    line = proc.wait_for_line("serving", timeout=120)
    return proc, line.split()[1]
