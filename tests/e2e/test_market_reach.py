"""`flopex market` asks every provider's worker whether it answers, and marks those that do not."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from marketplace.chain.anvil import free_port
from marketplace.requester.probe import AnswerBook, probe_endpoint, probe_endpoints
from tests.e2e.procs import FLOPEX, Proc, start_chain, start_provider

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def test_probe__nothing_listening_is_unreachable_within_the_timeout() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    began = time.monotonic()
    probe = probe_endpoint(endpoint, timeout_s=1.0)
    assert not probe.reachable and probe.latency_ms is None
    assert "no answer to GetInfo" in probe.detail
    assert time.monotonic() - began < 5


def test_probe__a_malformed_endpoint_and_a_wrong_pin_are_unreachable_with_a_reason() -> None:
    bad = probe_endpoint("not-an-endpoint", timeout_s=0.5)
    assert not bad.reachable and "expected host:port" in bad.detail
    pinned = probe_endpoint(f"127.0.0.1:{free_port()}#tls-spki={'ab' * 32}", timeout_s=0.5)
    assert not pinned.reachable and pinned.detail


def test_probe_endpoints__asks_all_at_once_and_once_per_endpoint() -> None:
    # Listeners that never speak: each probe waits out its whole timeout.
    silent = [socket.create_server(("127.0.0.1", 0)) for _ in range(8)]
    endpoints = [f"127.0.0.1:{s.getsockname()[1]}" for s in silent]
    try:
        began = time.monotonic()
        probes = probe_endpoints([*endpoints, endpoints[0], ""], timeout_s=1.0)
        took = time.monotonic() - began
    finally:
        for s in silent:
            s.close()
    assert set(probes) == set(endpoints)
    assert not any(p.reachable for p in probes.values())
    assert took < 4, took  # eight silent endpoints at 1 s each, asked concurrently
    assert probe_endpoints([]) == {}


def test_answer_book__remembers_answers_and_survives_a_damaged_file(tmp_path: Path) -> None:
    from marketplace.requester.probe import Probe

    path = tmp_path / "answers.json"
    book = AnswerBook(path)
    book.record([Probe("a:1", True, "ok", 100.0, 3), Probe("b:1", False, "down", 101.0)])
    again = AnswerBook(path)
    assert again.last_answered("a:1") == 100.0 and again.last_answered("b:1") is None
    path.write_text("{not json")
    assert AnswerBook(path).last_answered("a:1") is None


def _market(home: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPEX, "market", "--rpc-url", url, *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.slow
def test_market__a_killed_provider_is_marked_unreachable_and_a_live_one_reachable(
    tmp_path: Path, has_bwrap: bool
) -> None:
    home = tmp_path
    chain, url = start_chain(home)
    procs: list[Proc] = [chain]
    try:
        live, live_address = start_provider(home, 4, "0.2", "--rpc-url", url)
        procs.append(live)
        doomed, doomed_address = start_provider(home, 5, "0.3", "--rpc-url", url)
        procs.append(doomed)

        both = _market(home, url, "--json")
        assert both.returncode == 0, both.stderr
        rows = {p["provider"]: p for p in json.loads(both.stdout)["providers"]}
        assert rows[live_address]["reachable"] is True and rows[doomed_address]["reachable"] is True
        answered = rows[doomed_address]["last_answered"]
        assert answered is not None and rows[doomed_address]["latency_ms"] is not None

        doomed.stop("kill")
        began = time.monotonic()
        after = _market(home, url, "--json", "--probe-timeout", "1")
        took = time.monotonic() - began
        assert after.returncode == 0, after.stderr
        rows = {p["provider"]: p for p in json.loads(after.stdout)["providers"]}
        assert rows[live_address]["reachable"] is True
        dead = rows[doomed_address]
        assert dead["reachable"] is False and "no answer to GetInfo" in dead["reach_detail"]
        assert dead["last_answered"] == answered and dead["checked_at"] > answered
        assert took < 30, took

        text = _market(home, url, "--probe-timeout", "1")
        assert text.returncode == 0, text.stderr
        assert "2 provider(s), 1 not answering" in text.stdout
        line = next(ln for ln in text.stdout.splitlines() if doomed_address in ln)
        assert "NOT ANSWERING (last answered" in line
        assert "answers (" in next(ln for ln in text.stdout.splitlines() if live_address in ln)

        quiet = _market(home, url, "--json", "--no-probe")
        assert all(p["reachable"] is None for p in json.loads(quiet.stdout)["providers"])
        bad = _market(home, url, "--probe-timeout", "0")
        assert bad.returncode == 2 and "--probe-timeout" in bad.stderr
    finally:
        for proc in reversed(procs):
            proc.stop()
