"""Several hosts for real: two providers and a requester in network namespaces of their own, over TLS.

The test makes its own namespaces (a switch with a bridge, and one per party) joined by veth pairs,
addresses them in a 10.x subnet of its own, and removes everything at the end. The chain stays on
the host's loopback, reached through a forwarder on the test's host-side veth address. Needs root
and iproute2 (`ip`); skipped without them locally, failed in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Deployment, load_contracts
from marketplace.protocol.tls import parse_endpoint
from marketplace.types import SlotStatus
from tests.e2e.procs import FLOPEX, start_chain
from tests.e2e.test_tls_e2e import hello_bundle

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

REQUESTER, CHEAP, DEAR = 2, 4, 5
TAG = f"fx{os.getpid() % 100000}"
SUBNET = f"10.213.{os.getpid() % 250}"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30)


def _can_make_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{TAG}probe"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=30)
    if done.returncode != 0:
        return f"cannot create a network namespace: {done.stderr.decode().strip()}"
    _ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """Namespaces p1, p2, rq on one bridge (in namespace sw) with the host; name -> its address."""
    why = _can_make_namespaces()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the namespace test: {why}")
        pytest.skip(why)
    switch = f"{TAG}sw"
    parties = {"p1": 1, "p2": 2, "rq": 3}
    made: list[str] = []
    try:
        _ip("netns", "add", switch)
        made.append(switch)
        _ip("-n", switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", switch, "link", "set", "br0", "up")
        for name, i in parties.items():
            ns = f"{TAG}{name}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "add", f"{TAG}a{i}", "type", "veth", "peer", "name", f"{TAG}b{i}")
            _ip("link", "set", f"{TAG}a{i}", "netns", ns)
            _ip("link", "set", f"{TAG}b{i}", "netns", switch)
            _ip("-n", switch, "link", "set", f"{TAG}b{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{SUBNET}.{i}/24", "dev", f"{TAG}a{i}")
            _ip("-n", ns, "link", "set", f"{TAG}a{i}", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", f"{TAG}h", "type", "veth", "peer", "name", f"{TAG}hb")
        _ip("link", "set", f"{TAG}hb", "netns", switch)
        _ip("-n", switch, "link", "set", f"{TAG}hb", "master", "br0", "up")
        _ip("addr", "add", f"{SUBNET}.254/24", "dev", f"{TAG}h")
        _ip("link", "set", f"{TAG}h", "up")
        yield {**{f"{TAG}{n}": f"{SUBNET}.{i}" for n, i in parties.items()}, "host": f"{SUBNET}.254"}
    finally:
        _ip("link", "del", f"{TAG}h", check=False)
        for ns in reversed(made):
            _ip("netns", "del", ns, check=False)


@contextlib.contextmanager
def forward(listen: tuple[str, int], target: tuple[str, int]) -> Iterator[int]:
    """Forward TCP connections from ``listen`` to ``target`` (the chain) until the block ends."""
    server = socket.create_server(listen)
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(target, timeout=10)
            client.settimeout(None)
            upstream.settimeout(None)
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()
        thread.join(5)


def _in(ns: str, args: list[str], log: Path, home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLOPEX_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *FLOPEX, *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env
    )


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if text in line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {timeout:.0f} s:\n{log.read_text()}")


def test_two_providers_and_a_requester_on_three_hosts__a_job_runs_over_tls_and_is_paid(
    tmp_path: Path, namespaces: dict[str, str], has_bwrap: bool
) -> None:
    home = tmp_path
    chain, url = start_chain(home)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port = int(url.rsplit(":", 1)[1])
        with forward((namespaces["host"], 0), ("127.0.0.1", port)) as fwd:
            rpc = f"http://{namespaces['host']}:{fwd}"
            common = ["--rpc-url", rpc, "--deployment", str(home / "deployment.json")]
            for name, dev, price in (("p1", CHEAP, "0.2"), ("p2", DEAR, "0.3")):
                ns, addr = f"{TAG}{name}", namespaces[f"{TAG}{name}"]
                args = ["provider", "start", "--dev", str(dev), "--price", price, "--host", addr, "--port", "7443"]
                args += ["--data-dir", str(home / f"provider-{dev}"), *common]
                log = home / f"provider-{dev}.log"
                procs.append(_in(ns, args, log, home))
                _wait_for(log, "serving", procs[-1])
            contracts = load_contracts(Chain.connect(url), Deployment.load(home / "deployment.json"))
            for dev, name in ((CHEAP, "p1"), (DEAR, "p2")):
                endpoint = parse_endpoint(contracts.registry.offer(dev_account(dev).address).endpoint)
                assert endpoint.host == namespaces[f"{TAG}{name}"] and endpoint.spki_sha256 is not None
            submit = [*FLOPEX, "job", "submit", str(hello_bundle(home)), "--dev", str(REQUESTER), "--json"]
            submit += ["--verify", "none", "--challenge-window", "3", "--wait", "-o", str(home / "out"), *common]
            done = subprocess.run(
                ["ip", "netns", "exec", f"{TAG}rq", *submit],
                capture_output=True,
                text=True,
                timeout=300,
                env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join(sys.path)},
            )
            assert done.returncode == 0, done.stderr + "\n".join(p.read_text() for p in home.glob("provider-*.log"))
            bill = json.loads(done.stdout)
            [slot] = bill["slots"]
            assert slot["provider"] in (dev_account(CHEAP).address, dev_account(DEAR).address)
            assert slot["status"] == "paid" and slot["paid"] > 0
            assert contracts.market.slot(bill["job_id"], 0).status == SlotStatus.PAID
            assert any(p.read_text() == "hello over tls" for p in (home / "out").rglob("hello.txt"))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        chain.stop()
