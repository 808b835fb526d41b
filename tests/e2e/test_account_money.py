"""`flopex account balance` and `account withdraw`: an account's money across the contracts, bad input too."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from flopex.cli.main import cli
from marketplace.chain.client import Chain, dev_account
from marketplace.chain.jsonrpc_server import JsonRpcChainServer
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import ONE_TOKEN, format_tokens

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

ROOT = Path(__file__).resolve().parents[2]
REQUESTER, PROVIDER = 2, 4


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Contracts, Path, int]]:
    """A served dev market where the requester has a cancelled job's escrow as credit and a provider stakes."""
    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    contracts = setup_dev_market(Chain(Web3(provider), embedded_tester=tester), accounts=5)
    requester = dev_account(REQUESTER)
    job_id = Requester(contracts, requester).submit(ROOT / "examples" / "plain_torch", JobOptions(bid_window_s=600))
    escrow = contracts.market.job(job_id).escrow
    contracts.market.cancel_job(requester, job_id)
    staker = dev_account(PROVIDER)
    contracts.token.approve(staker, contracts.registry.address, 200 * ONE_TOKEN)
    contracts.registry.stake(staker, 200 * ONE_TOKEN)
    server = JsonRpcChainServer(provider, tester, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    deployment = tmp_path_factory.mktemp("home") / "deployment.json"
    replace(contracts.deployment, rpc_url=f"http://127.0.0.1:{server.port}").save(deployment)
    try:
        yield contracts, deployment, escrow
    finally:
        server.shutdown()


def _run(deployment: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--deployment", str(deployment)], obj={})


def test_balance__shows_wallet_credits_and_stake_in_json_and_text(market: Any) -> None:
    contracts, deployment, escrow = market
    result = _run(deployment, "account", "balance", "--dev", str(REQUESTER), "--json")
    assert result.exit_code == 0, result.output
    balance = json.loads(result.stdout)
    address = dev_account(REQUESTER).address
    assert balance["address"] == address
    assert balance["wallet"] == contracts.token.balance_of(address)
    assert balance["credits"]["market"] == escrow > 0 and balance["credits"]["reservations"] == 0
    assert balance["credits_total"] == escrow and balance["credits"]["pools"] == {}
    assert balance["total"] == balance["wallet"] + escrow

    staker = dev_account(PROVIDER).address
    result = _run(deployment, "account", "balance", staker.lower(), "--json")
    stake = json.loads(result.stdout)["stake"]
    assert stake == {"active": 200 * ONE_TOKEN, "locked": 0, "free": 200 * ONE_TOKEN, "unbonding": 0} | {
        "unbond_at": stake["unbond_at"],
        "active_jobs": 0,
    }
    text = _run(deployment, "account", "balance", "--account", staker).stdout
    assert f"account {staker}" in text and f"{format_tokens(200 * ONE_TOKEN)} FLOP active" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0x1234"], "error: not an address: '0x1234' (expected 0x and 40 hex digits)"),
        ([], "error: name one account: ADDRESS, --account ADDRESS or --dev N"),
        (["--dev", "2", dev_account(2).address], "error: name one account: ADDRESS, --account ADDRESS or --dev N"),
        (["--account", "nonsense"], "error: not an address: 'nonsense' (expected 0x and 40 hex digits)"),
    ],
)
def test_balance__bad_input__is_one_line_and_a_non_zero_exit(market: Any, args: list[str], message: str) -> None:
    _, deployment, _ = market
    result = _run(deployment, "account", "balance", *args)
    assert result.exit_code == 1
    assert result.stderr == message + "\n"


def test_balance__without_a_deployment__says_so(tmp_path: Path) -> None:
    result = _run(tmp_path / "none.json", "account", "balance", "--dev", "2")
    assert result.exit_code == 1 and result.stderr.startswith("error: no deployment file")


def test_withdraw__pulls_every_credit_then_has_nothing_left(market: Any) -> None:
    contracts, deployment, escrow = market
    address = dev_account(REQUESTER).address
    before = contracts.token.balance_of(address)
    result = _run(deployment, "account", "withdraw", "--dev", str(REQUESTER), "--json")
    assert result.exit_code == 0, result.output
    pulled = json.loads(result.stdout)
    assert pulled["withdrawn"] == {"market": escrow} and pulled["total"] == escrow
    assert pulled["wallet"] == before + escrow == contracts.token.balance_of(address)
    assert contracts.market.credits(address) == 0

    again = _run(deployment, "account", "withdraw", "--dev", str(REQUESTER))
    assert again.exit_code == 0 and again.stdout == f"{address} has no credit to withdraw\n"


def test_withdraw__without_an_account__is_one_line(market: Any) -> None:
    _, deployment, _ = market
    result = _run(deployment, "account", "withdraw")
    assert result.exit_code == 1
    assert result.stderr == "error: no account: give --account ADDRESS (a keystore key) or --dev N on a dev chain\n"


def test_payout__direct_then_credit__is_set_on_chain_and_shown(market: Any) -> None:
    contracts, deployment, _ = market
    address = dev_account(PROVIDER).address
    assert not contracts.market.direct_payout(address)
    shown = _run(deployment, "account", "payout", "--dev", str(PROVIDER), "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == {"address": address, "payout": "credit", "credits": 0}
    direct = _run(deployment, "account", "payout", "direct", "--dev", str(PROVIDER), "--json")
    assert direct.exit_code == 0, direct.output
    assert json.loads(direct.stdout)["payout"] == "direct" and contracts.market.direct_payout(address)
    text = _run(deployment, "account", "payout", "credit", "--dev", str(PROVIDER))
    assert text.exit_code == 0 and text.stdout == f"{address} is paid by credit\n"
    assert not contracts.market.direct_payout(address)


def test_payout__an_unknown_mode__is_refused_and_changes_nothing(market: Any) -> None:
    contracts, deployment, _ = market
    result = _run(deployment, "account", "payout", "instant", "--dev", str(PROVIDER))
    assert result.exit_code == 2 and "'instant' is not one of 'direct', 'credit'" in result.output
    assert not contracts.market.direct_payout(dev_account(PROVIDER).address)
