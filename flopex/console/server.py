"""Serving the console on uvicorn: in the foreground (``flopex console``) or in a thread (the demo, tests)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from marketplace.errors import ConfigError

__all__ = ["RunningConsole", "serve", "start"]


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _server(app: Any) -> uvicorn.Server:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    return uvicorn.Server(config)


@dataclass
class RunningConsole:
    """A console served from a thread; ``stop()`` ends it."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start(app: Any, *, host: str = "127.0.0.1", port: int = 0) -> RunningConsole:
    """Serve ``app`` from a daemon thread on ``host:port`` (0: any free port); returns once it listens."""
    sock = _bind(host, port)
    server = _server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="console", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise ConfigError(f"the console did not start on {host}:{sock.getsockname()[1]}")
    return RunningConsole(f"http://{host}:{sock.getsockname()[1]}", server, thread)


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8080, ready: Any = None) -> None:
    """Serve ``app`` in the foreground until interrupted; ``ready(url)`` is called once it listens."""
    sock = _bind(host, port)
    server = _server(app)
    url = f"http://{host}:{sock.getsockname()[1]}"
    if ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            ready(url)

        server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])
