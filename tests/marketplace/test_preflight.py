"""`job submit` warns before money moves: no verifier, checks longer than the window, nothing to compare."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from flopex.cli.main import cli
from marketplace.chain.client import Chain, dev_account
from marketplace.chain.jsonrpc_server import JsonRpcChainServer
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import ConfigError
from marketplace.protocol.bundle import Bundle, load_bundle
from marketplace.requester.preflight import (
    MIN_CHALLENGE_WINDOW_S,
    PROVIDERS_LONGEST_WINDOW_S,
    active_verifiers,
    check_estimate_s,
    default_challenge_window,
    preflight,
    writes_files,
)
from marketplace.types import ONE_TOKEN, Policy

VERIFIER = 6
WRITES = "import os, torch\ntorch.save({}, os.path.join(os.environ['FLOPEX_OUTPUT_DIR'], 'w.pt'))\n"
PRINTS = "print(sum(range(10)))\n"


@pytest.fixture(scope="module")
def market() -> Iterator[Contracts]:
    yield setup_dev_market(Chain.embedded(), accounts=7)


def _bundle(root: Path, code: str, *, policy: str = "replay", timeout_s: int = 600, args: str = "[]") -> Bundle:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.py").write_text(code)
    (root / "job.toml").write_text(
        f'[job]\nentrypoint = "main.py"\nargs = {args}\n[resources]\ndevice = "cpu"\ntimeout_s = {timeout_s}\n'
        f'[verification]\npolicy = "{policy}"\n[market]\nmax_price = "1"\n'
    )
    return load_bundle(root)


def test_window__is_sized_from_the_timeout_within_the_market_bound() -> None:
    assert check_estimate_s(Policy.REPLAY, 600) == 660 and check_estimate_s(Policy.NONE, 600) == 0
    assert check_estimate_s(Policy.FREIVALDS, 10_000) == 60
    assert default_challenge_window(Policy.REPLAY, 600, 7 * 86400) == 660 + 165
    assert default_challenge_window(Policy.NONE, 600, 7 * 86400) == MIN_CHALLENGE_WINDOW_S
    assert default_challenge_window(Policy.OPTIMISTIC, 600, 300) == 300
    assert default_challenge_window(Policy.REPLAY, 7 * 86400, 7 * 86400) == PROVIDERS_LONGEST_WINDOW_S


def test_a_week_long_job__gets_the_window_providers_bid_for_and_a_warning_that_checks_may_outlast_it(
    market: Contracts, tmp_path: Path
) -> None:
    checks = preflight(market, _bundle(tmp_path / "long", WRITES, timeout_s=7 * 86400))
    assert checks.challenge_window_s == PROVIDERS_LONGEST_WINDOW_S
    [no_verifier, window] = checks.warnings
    assert no_verifier.startswith("the replay policy needs a verifier")
    assert window.startswith(f"the replay checks may take up to {7 * 86400 + 60} s")
    assert "providers bid for by default" in window
    longer = preflight(market, _bundle(tmp_path / "given", WRITES), challenge_window_s=2 * 86400)
    assert any(w.startswith("a challenge window of 172800 s is longer than providers bid for") for w in longer.warnings)


def test_writes_files__finds_the_usual_ways_of_writing_and_not_printing(tmp_path: Path) -> None:
    assert writes_files(_bundle(tmp_path / "a", WRITES))
    assert writes_files(_bundle(tmp_path / "b", "open('model.txt', 'w').write('x')\n"))
    assert writes_files(_bundle(tmp_path / "c", "import matplotlib.pyplot as plt\nplt.savefig('a.png')\n"))
    assert writes_files(_bundle(tmp_path / "d", PRINTS, args='["--save", "{output_dir}/m.pt"]'))
    assert not writes_files(_bundle(tmp_path / "e", PRINTS))
    assert not writes_files(_bundle(tmp_path / "f", "print(open('data.txt').read())\n"))


def test_no_verifier__a_short_window_and_nothing_to_compare__are_each_one_warning(
    market: Contracts, tmp_path: Path
) -> None:
    assert active_verifiers(market) == 0
    checks = preflight(market, _bundle(tmp_path / "p", PRINTS, timeout_s=600), challenge_window_s=60)
    assert checks.challenge_window_s == 60 and not checks.window_sized
    assert len(checks.warnings) == 3, checks.warnings
    none, window, nothing = checks.warnings
    assert none.startswith("the replay policy needs a verifier and none is registered and staked on this market")
    assert "paid on their claim after the 60 s challenge window, unchecked" in none
    assert window.startswith("the replay checks may take up to 660 s (the job's timeout of 600 s and a margin)")
    assert "give --challenge-window 825 or more" in window
    assert nothing.startswith("nothing to compare:") and all("\n" not in w for w in checks.warnings)


def test_a_job_that_writes_files_with_a_sized_window_and_no_verifier__warns_only_of_the_verifier(
    market: Contracts, tmp_path: Path
) -> None:
    checks = preflight(market, _bundle(tmp_path / "w", WRITES, timeout_s=600))
    assert checks.window_sized and checks.challenge_window_s == 825
    assert [w.split(":")[0] for w in checks.warnings] == [
        "the replay policy needs a verifier and none is registered and staked on this market"
    ]
    quiet = preflight(market, _bundle(tmp_path / "n", PRINTS, policy="none"))
    assert quiet.warnings == () and quiet.challenge_window_s == MIN_CHALLENGE_WINDOW_S


def test_a_window_above_the_market_bound__is_refused_in_one_line(market: Contracts, tmp_path: Path) -> None:
    longest = market.market.window_bounds()[2]
    with pytest.raises(ConfigError, match=rf"^--challenge-window {longest + 1} is above .* of {longest} s$"):
        preflight(market, _bundle(tmp_path / "x", WRITES), challenge_window_s=longest + 1)


def test_a_registered_verifier__silences_the_verifier_warning(tmp_path: Path) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=7)
    verifier = dev_account(VERIFIER)
    contracts.token.approve(verifier, contracts.registry.address, 100 * ONE_TOKEN)
    contracts.registry.stake(verifier, 100 * ONE_TOKEN)
    contracts.registry.register_verifier(verifier)
    assert active_verifiers(contracts) == 1
    checks = preflight(contracts, _bundle(tmp_path / "v", WRITES), policy=Policy.REDUNDANT, redundancy=3)
    assert checks.warnings == () and checks.redundancy == 3 and checks.active_verifiers == 1
    assert checks.challenge_window_s == default_challenge_window(Policy.REDUNDANT, 600, 7 * 86400)


@pytest.mark.slow
def test_job_submit__prints_the_warnings_before_posting_and_sizes_the_window(tmp_path: Path) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=4)
    chain = contracts.chain
    server = JsonRpcChainServer(chain.w3.provider, chain._tester, port=0)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deployment = tmp_path / "deployment.json"
        replace(contracts.deployment, rpc_url=f"http://127.0.0.1:{server.port}").save(deployment)
        _bundle(tmp_path / "job", PRINTS, timeout_s=120)
        submit = ["job", "submit", str(tmp_path / "job"), "--dev", "2", "--deployment", str(deployment)]
        result = CliRunner().invoke(cli, [*submit, "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["preflight"]["challenge_window_s"] == 225 and doc["preflight"]["window_sized"]
        assert doc["preflight"]["active_verifiers"] == 0 and len(doc["preflight"]["warnings"]) == 2
        assert contracts.market.spec(doc["job_id"]).challenge_window == 225
        warned = result.stderr.splitlines()
        assert warned[0].startswith("warning: the replay policy needs a verifier")
        assert warned[1].startswith("warning: nothing to compare:")

        given = CliRunner().invoke(cli, [*submit, "--challenge-window", "30", "--json"])
        assert given.exit_code == 0, given.output
        job = json.loads(given.stdout)["job_id"]
        assert contracts.market.spec(job).challenge_window == 30
        assert "warning: the replay checks may take up to 180 s" in given.stderr

        before = contracts.market.job_count()
        refused = CliRunner().invoke(cli, [*submit, "--challenge-window", str(10**9)])
        assert refused.exit_code == 1 and refused.output.startswith("error: --challenge-window 1000000000 is above")
        assert contracts.market.job_count() == before  # nothing posted, no money moved
    finally:
        server.shutdown()
