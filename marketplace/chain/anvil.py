"""Local development chains: finding and running anvil, and the shared dev accounts.

anvil ships in the npm package ``@foundry-rs/anvil-linux-amd64``; :func:`find_anvil` looks for it
in ``$FLOPEX_ANVIL``, on ``PATH`` and in ``node_modules`` of the current and the project directory.
:class:`Anvil` starts one on 127.0.0.1 and stops it again.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from marketplace.errors import ChainError, ConfigError

__all__ = ["Anvil", "find_anvil", "free_port", "wait_for_port"]

_NPM_BIN = Path("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")


def find_anvil() -> str | None:
    """The path of an anvil binary, or None when none is installed."""
    explicit = os.environ.get("FLOPEX_ANVIL")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("anvil")
    if found:
        return found
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = base / _NPM_BIN
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ChainError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


class Anvil:
    """An anvil node on 127.0.0.1 for as long as the context lasts."""

    def __init__(self, port: int | None = None, *, binary: str | None = None, block_time: int | None = None) -> None:
        self.binary = binary or find_anvil()
        if self.binary is None:
            raise ConfigError("anvil is not installed: npm install @foundry-rs/anvil-linux-amd64")
        self.port = port or free_port()
        self.block_time = block_time
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node's JSON-RPC URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Anvil:
        """Start the node and wait until it answers."""
        args = [self.binary or "anvil", "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        if self.block_time:
            args += ["--block-time", str(self.block_time)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port)
        except ChainError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the node."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
