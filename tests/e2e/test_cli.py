"""The command line as users meet it: the demo's story, the local chain, deploys, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from flopex.cli.main import cli
from marketplace.chain.anvil import free_port, wait_for_port
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Deployment, load_contracts
from marketplace.types import ONE_TOKEN, slot_value

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def demo_json() -> dict:
    result = CliRunner().invoke(cli, ["demo", "--json"], obj={})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_demo__sealed_training_job__lowest_ask_wins_at_the_second_lowest(demo_json: dict) -> None:
    job = demo_json["jobs"][1]
    asks = sorted(job["bids"].values())
    assert (job["auction"], job["policy"], job["kind"]) == ("sealed", "replay", "training")
    assert len(asks) == 2  # the slashed provider can no longer bid
    assert job["winner"] == min(job["bids"], key=job["bids"].get)
    assert job["clearing_price"] == asks[1]


@pytest.mark.slow
def test_demo__replay_verified_job__is_paid_verified_seconds_times_the_clearing_price(demo_json: dict) -> None:
    job = demo_json["jobs"][1]
    assert job["verified"] is True and job["status"] == "paid" and job["gpu_seconds"] > 0
    assert job["paid"] == slot_value(job["clearing_price"], job["gpu_seconds"])
    assert job["fee"] == job["paid"] * 100 // 10_000
    assert job["paid"] + job["refunded"] + job["refunded_at_lease"] == job["escrow"]
    assert demo_json["balances"][job["winner"]]["change"] == job["paid"] - job["fee"]


@pytest.mark.slow
def test_demo__provider_returning_a_wrong_product__is_caught_by_freivalds_and_slashed(demo_json: dict) -> None:
    job = demo_json["jobs"][0]
    assert (job["auction"], job["policy"], job["winner"]) == ("instant", "freivalds", "provider-c")
    assert job["verified"] is False and job["status"] == "slashed" and job["paid"] == 0
    slot = slot_value(job["clearing_price"], 360)
    assert job["refunded"] == slot and job["refunded_at_lease"] + job["refunded"] == job["escrow"]
    assert job["slashed"] == slot + 50 * ONE_TOKEN
    assert demo_json["balances"]["provider-c"]["change"] == -job["slashed"]


@pytest.mark.slow
def test_demo__pool_job__pays_the_member_that_ran_it_less_the_operators_fee(demo_json: dict) -> None:
    job = demo_json["jobs"][2]
    assert (job["winner"], job["status"], job["auction"]) == ("pool", "paid", "instant")
    runner = job["pool"]["runner"]
    idle = ({"member-1", "member-2"} - {runner}).pop()
    income = job["paid"] - job["fee"]
    operator_fee = income * 1_000 // 10_000
    assert job["pool"]["operator_fee"] == operator_fee
    assert demo_json["balances"][runner]["change"] == income - operator_fee
    assert demo_json["balances"]["pool-operator"]["change"] == operator_fee
    assert demo_json["balances"][idle]["change"] == 0
    assert job["pool"]["member_gpu_seconds"][runner] == job["gpu_seconds"] > 0


@pytest.mark.slow
def test_demo__reservation__runs_the_holders_job_without_an_auction_and_pays_the_whole_window(
    demo_json: dict,
) -> None:
    r = demo_json["reservation"]
    assert (r["provider"], r["holder"], r["status"]) == ("provider-b", "requester", "paid")
    assert r["value"] == r["gpus"] * r["duration"] * r["price"] // 3600
    assert r["job"]["state"] == "succeeded" and r["job"]["recorded_gpu_seconds"] >= 1
    assert r["used_gpu_seconds"] == r["job"]["recorded_gpu_seconds"] < r["duration"]
    assert r["paid"] == r["value"] and r["refunded"] == 0  # the whole window, used or not
    assert r["fee"] == r["value"] * 100 // 10_000
    assert demo_json["balances"]["provider-b"]["change"] == r["paid"] - r["fee"]


@pytest.mark.slow
def test_demo__capacity_of_every_provider__is_measured_and_none_flagged(demo_json: dict) -> None:
    assert set(demo_json["capacity"]) == {"provider-a", "provider-b", "provider-c"}
    assert all(c["gflops"] > 0 and not c["flagged"] for c in demo_json["capacity"].values())


@pytest.mark.slow
def test_demo__balances__are_conserved(demo_json: dict) -> None:
    changes = [b["change"] for b in demo_json["balances"].values()]
    assert sum(changes) == 0
    assert demo_json["conserved"] is True


@pytest.mark.slow
def test_demo__human_output__tells_the_story() -> None:
    result = CliRunner().invoke(cli, ["demo"], obj={})
    assert result.exit_code == 0, result.output
    for phrase in (
        "sealed bids committed",
        "won with the lowest ask",
        "Freivalds",
        "slashed",
        "replayed sampled segments",
        "bill:",
        "the pool took it",
        "at once, no auction",
        "for the whole window",
        "conserved: yes",
    ):
        assert phrase in result.output


def test_unknown_flag__exits_non_zero_with_a_usage_line() -> None:
    result = CliRunner().invoke(cli, ["demo", "--frobnicate"], obj={})
    assert result.exit_code == 2
    assert "No such option '--frobnicate'" in result.output


def test_deploy__with_no_chain_at_the_url__prints_one_line_and_fails() -> None:
    result = CliRunner().invoke(cli, ["deploy", "--rpc-url", f"http://127.0.0.1:{free_port()}", "--dev", "0"], obj={})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no chain answers at http://127.0.0.1:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_deploy__without_a_key__explains_how_to_give_one(anvil_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLOPEX_DEPLOYER_KEY"}
    result = CliRunner(env=env).invoke(cli, ["deploy", "--rpc-url", anvil_url], obj={})
    assert result.exit_code == 1
    assert "set FLOPEX_DEPLOYER_KEY" in result.stderr


@pytest.mark.slow
def test_deploy__to_anvil__writes_a_deployment_that_binds(anvil_url: str, tmp_path: Path) -> None:
    path = tmp_path / "deployment.json"
    result = CliRunner().invoke(
        cli, ["deploy", "--rpc-url", anvil_url, "--dev", "0", "--deployment", str(path), "--json"], obj={}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["market"] == Deployment.load(path).market
    contracts = load_contracts(Chain.connect(anvil_url), Deployment.load(path))
    assert contracts.token.balance_of(dev_account(3).address) == 100_000 * ONE_TOKEN


@pytest.mark.slow
def test_chain_up__serves_a_chain_other_processes_share(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "deployment.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flopex", "chain", "up", "--port", str(port), "--deployment", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port, timeout=60)
        for _ in range(100):
            if path.exists():
                break
            wait_for_port(port, timeout=1)
        deployment = Deployment.load(path)
        assert deployment.rpc_url == f"http://127.0.0.1:{port}"
        contracts = load_contracts(Chain.connect(deployment.rpc_url), deployment)
        requester, provider = dev_account(2), dev_account(3)
        contracts.token.transfer(requester, provider.address, ONE_TOKEN)
        assert contracts.token.balance_of(provider.address) == 100_001 * ONE_TOKEN
        # A second client process sees the same state.
        code = (
            "from marketplace.contracts.deployment import Deployment, load_contracts;"
            "from marketplace.chain.client import Chain;"
            f"d = Deployment.load({str(path)!r}); c = load_contracts(Chain.connect(d.rpc_url), d);"
            f"print(c.token.balance_of({provider.address!r}))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert int(out.stdout) == 100_001 * ONE_TOKEN
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "chain stopped" in proc.stdout.read()


@pytest.mark.parametrize(
    "text",
    [
        '[job]\nentrypoint = "main.py"\n[resources]\ntimeout_s = 18446744073709551616\n[market]\nmax_price = "1"\n',
        '[job]\nentrypoint = "main.py"\n[resources]\nmin_memory_gb = 1e300\n[market]\nmax_price = "1"\n',
        '[job]\nentrypoint = "main.py"\nargs = [' + '"a",' * 5000 + ']\n[market]\nmax_price = "1"\n',
        "x = " + "[" * 100_000 + "]" * 100_000 + "\n",
    ],
    ids=["timeout-2**64", "memory-1e300", "5000-args", "deep-arrays"],
)
def test_job_submit__a_job_toml_beyond_its_bounds__is_one_line_before_any_chain(tmp_path: Path, text: str) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "main.py").write_text("print(1)\n")
    (bundle / "job.toml").write_text(text)
    result = CliRunner().invoke(
        cli, ["job", "submit", str(bundle), "--dev", "2", "--rpc-url", "http://127.0.0.1:9"], obj={}
    )
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert lines[0].startswith(("error: resources.", "error: job.")), lines[0]


def test_job_result__a_download_that_fails__says_so_and_never_that_it_matches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from eth_account import Account

    import flopex.cli.main as main
    import marketplace.market.routing as routing
    from marketplace.errors import WorkerError
    from marketplace.requester.client import WorkerClient

    slot = SimpleNamespace(slot=0, provider="0x" + "11" * 20, result_root=b"\1" * 32)
    market = SimpleNamespace(address="0x" + "22" * 20, slots_of=lambda job_id: [slot])
    fake = SimpleNamespace(chain=SimpleNamespace(chain_id=31337), market=market)
    monkeypatch.setattr(main, "open_contracts", lambda *a: fake)
    monkeypatch.setattr(main, "load_signer", lambda *a: Account.create())
    monkeypatch.setattr(
        routing, "slot_worker", lambda *a: SimpleNamespace(endpoint="127.0.0.1:9", signer=slot.provider)
    )

    def broken(*a: object, **k: object) -> None:
        raise WorkerError("the stream broke after the manifest", code="UNAVAILABLE")

    monkeypatch.setattr(WorkerClient, "download_results", broken)
    result = CliRunner().invoke(cli, ["job", "result", "1", "-o", str(tmp_path / "r")], obj={})
    assert result.exit_code == 1, result.output
    assert "matches" not in result.output and "results not downloaded" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: job 1: the results of slot(s) 0")
