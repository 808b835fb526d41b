"""The console's pages in-process (Starlette's TestClient) on a small market: what they show matches the
chain, bad input gets a clear message and a proper status, and the index cache survives a restart."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from flopex.cli.main import cli
from flopex.console.app import create_app
from flopex.console.reader import WINDOWS, MarketReader
from marketplace.chain.client import dev_account
from marketplace.contracts.events import SlotSettled
from marketplace.market.index import compute_index, read_history
from marketplace.types import format_tokens
from tests.console.kit import MEMBER, SmallMarket, small_market

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
REQUESTER = 2


@pytest.fixture(scope="module")
def market() -> SmallMarket:
    return small_market()


@pytest.fixture(scope="module")
def reader(market: SmallMarket, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MarketReader]:
    data = tmp_path_factory.mktemp("console")
    found = MarketReader(market.contracts, deployment_path="test-deployment.json", data_dir=data, probe_timeout_s=0.3)
    yield found
    found.close()


@pytest.fixture(scope="module")
def client(reader: MarketReader) -> Iterator[TestClient]:
    with TestClient(create_app(reader, poll_s=0.05)) as found:
        yield found


def _text(html: str) -> str:
    """The page's text without tags, whitespace folded."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_every_page__says_which_chain_and_deployment_it_reads(client: TestClient, market: SmallMarket) -> None:
    provider = market.made["providers"][0]
    for url in ("/market", "/job/1", f"/account/{provider}", "/job/999"):
        page = client.get(url).text
        assert f"reading chain <b>{market.contracts.chain.chain_id}</b>" in page, url
        assert "test-deployment.json" in page and market.contracts.market.address in page, url


def test_market__lists_open_jobs_providers_reservations_and_pools(client: TestClient, market: SmallMarket) -> None:
    response = client.get("/market")
    assert response.status_code == 200
    page = response.text
    open_section = page.split('id="open-jobs"')[1].split("</section>")[0]
    assert re.findall(r'href="/job/(\d+)"', open_section) == ["5", "4"]
    registry = market.contracts.registry
    providers = page.split('id="providers"')[1].split("</section>")[0]
    for address in [*market.made["providers"], market.pool.address]:
        assert f'data-provider="{address}"' in providers
        row = providers.split(f'data-provider="{address}"')[1].split("</tr>")[0]
        assert f">{format_tokens(registry.price_floor(address))}<" in row
        stake = registry.stakes(address).active
        assert format_tokens(stake) in row
    assert "nvidia h100" not in providers and "cuda:NVIDIA H100 80GB HBM3" in providers
    slashed_provider = market.made["providers"][2]
    completed, failed, slashed = registry.reputation(slashed_provider)
    assert slashed == 1 and f"{completed} done · {failed} failed · {slashed} slashed" in _text(
        providers.split(f'data-provider="{slashed_provider}"')[1].split("</tr>")[0]
    )
    sale = page.split('id="reservations"')[1].split("</section>")[0]
    assert "<td>1</td>" in sale
    pools = _text(page.split('id="pools"')[1].split("</section>")[0])
    assert market.pool.address in pools and "fee 5.0%" in pools
    assert dev_account(MEMBER).address[:8] in pools


def test_market__provider_endpoints_are_probed_and_reported_unreachable(client: TestClient) -> None:
    client.get("/market")
    deadline = time.monotonic() + 20
    while True:
        probes = client.get("/market/reachability.json").json()
        if all(p["reach"] != "checking" for p in probes.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert probes and all(p["reach"] == "unreachable" for p in probes.values()), probes
    assert "GetInfo" in next(iter(probes.values()))["reach_detail"]


@pytest.mark.slow  # the index over the chain, once per window
@pytest.mark.parametrize("window", WINDOWS)
def test_chart__stats_per_window_match_the_index_read_from_the_chain(
    client: TestClient, market: SmallMarket, window: str
) -> None:
    chart = client.get(f"/market/chart.json?window={window}").json()
    expected = compute_index(read_history(market.contracts, block=chart_block(client)), [window]).windows[window]
    assert {s["class"] for s in chart["stats"]} == set(expected)
    for row in chart["stats"]:
        stats = expected[row["class"]]
        assert (row["twap"], row["last"], row["leases"]) == (stats.twap, stats.last, stats.leases)
    assert len(chart["x"]) == len(chart["series"][0]["price"]) == len(chart["series"][0]["twap"])
    prices = {p for s in chart["series"] for p in s["price"] if p is not None}
    if window in ("7d", "all"):
        assert prices, "every lease is within a week"


def chart_block(client: TestClient) -> int:
    page = client.get("/market").text
    return int(re.search(r'id="source-block">(\d+)<', page).group(1))  # type: ignore[union-attr]


def test_job__sealed_and_paid__timeline_bids_and_bill_match_the_chain(client: TestClient, market: SmallMarket) -> None:
    m = market.contracts.market
    response = client.get("/job/1")
    assert response.status_code == 200
    page = response.text
    events = [e for e in m.get_events("SlotSettled", m.start_block, job_id=1) if isinstance(e, SlotSettled)]
    [settled] = events
    timeline = page.split('id="timeline"')[1].split("</section>")[0]
    steps = re.findall(r'data-event="(\w+)"', timeline)
    assert steps[0] == "JobPosted" and steps[-1] == "JobClosed"
    assert {"BidCommitted", "BidRevealed", "SlotLeased", "ResultCommitted", "ResultAttested", "SlotSettled"} <= set(
        steps
    )
    assert settled.tx_hash[:8] in timeline and f">{settled.block_number}<" in timeline
    bids = page.split('id="bids"')[1].split("</section>")[0]
    revealed = m.get_events("BidRevealed", m.start_block, job_id=1)
    assert len(revealed) == 2 and all(format_tokens(b.price) in bids for b in revealed)
    bill = page.split('class="bill"')[1].split("</table>")[0]
    for css, value in (
        ("bill-paid", settled.paid),
        ("bill-fee", settled.fee),
        ("bill-refunded", settled.refunded),
        ("bill-slashed", settled.slashed),
    ):
        assert re.search(rf'class="num {css}">{re.escape(format_tokens(value))}<', bill), css
    assert f'class="num bill-gpu-seconds">{settled.gpu_seconds}<' in bill
    slot = m.slot(1, 0)
    assert "0x" + slot.result_root.hex() in page
    assert settled.status.name.lower() == "paid" and "accept by" in _text(page)


def test_job__slashed__bill_and_the_providers_slash_with_its_reason(client: TestClient, market: SmallMarket) -> None:
    m = market.contracts.market
    [settled] = [e for e in m.get_events("SlotSettled", m.start_block, job_id=3) if isinstance(e, SlotSettled)]
    page = client.get("/job/3").text
    assert settled.slashed > 0 and re.search(rf"bill-slashed\">{re.escape(format_tokens(settled.slashed))}<", page)
    assert "reject by" in _text(page)
    account = _text(client.get(f"/account/{settled.provider}").text.split('id="slashes"')[1])
    assert "job 3 slot 0: a verifier rejected the result (replay check)" in account


def test_job_json__is_the_same_data(client: TestClient, market: SmallMarket) -> None:
    data = client.get("/job/2.json").json()
    assert data["summary"]["status"] == "closed" and data["slots"][0]["bill"]["status"] == "paid"
    assert (
        data["slots"][0]["bill"]["paid"]
        == market.contracts.market.get_events("SlotSettled", market.contracts.market.start_block, job_id=2)[0].paid
    )


def test_account__money_jobs_and_earnings_match_the_chain(client: TestClient, market: SmallMarket) -> None:
    c = market.contracts
    requester = dev_account(REQUESTER).address
    page = client.get(f"/account/{requester}").text
    assert f'id="balance">{format_tokens(c.token.balance_of(requester))}<' in page
    assert f'id="market-credit">{format_tokens(c.market.credits(requester))}<' in page
    posted = page.split('id="posted"')[1].split("</section>")[0]
    assert sorted(int(i) for i in re.findall(r'href="/job/(\d+)"', posted)) == [1, 2, 3, 4, 5]
    winner = c.market.slot(1, 0).provider
    page = client.get(f"/account/{winner.lower()}").text  # any case of the address
    assert f'id="stake">{format_tokens(c.registry.stakes(winner).active)}<' in page
    settled = c.market.get_events("SlotSettled", c.market.start_block, job_id=1)[0]
    earnings = page.split('id="earnings"')[1].split("</section>")[0]
    assert format_tokens(settled.paid - settled.fee) in earnings
    run = page.split('id="run"')[1].split("</section>")[0]
    assert 'href="/job/1"' in run


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/job/abc", 400, "not a job id: &#39;abc&#39;"),
        ("/job/0", 400, "jobs are numbered from 1"),
        ("/job/999", 404, "no job 999 on this market (jobs 1..5)"),
        ("/job?id=x1", 400, "not a job id"),
        ("/account/0x12", 400, "not an address: &#39;0x12&#39;"),
        ("/account?address=bob", 400, "not an address"),
        ("/market?window=5y", 400, "no window &#39;5y&#39;"),
        ("/no/such/page", 404, "no page at /no/such/page"),
    ],
)
def test_bad_input__a_clear_message_and_a_proper_status(
    client: TestClient, url: str, status: int, message: str
) -> None:
    response = client.get(url)
    assert response.status_code == status
    assert message in response.text
    assert "Traceback" not in response.text and 'id="error"' in response.text


def test_bad_input_to_json__a_json_error(client: TestClient) -> None:
    response = client.get("/market/chart.json?window=5y")
    assert response.status_code == 400 and "no window" in response.json()["error"]
    assert client.get("/job/77.json").status_code == 404


def test_search_forms__redirect_to_the_page(client: TestClient, market: SmallMarket) -> None:
    assert client.get("/job?id=2", follow_redirects=False).headers["location"] == "/job/2"
    address = market.made["providers"][0]
    assert client.get(f"/account?address={address.lower()}", follow_redirects=False).headers["location"] == (
        f"/account/{address}"
    )


def test_live__without_the_requesters_key__says_logs_need_it_and_ends_for_a_closed_job(client: TestClient) -> None:
    body = client.get("/job/1/live").text
    events = re.findall(r"^event: (\w+)$", body, re.M)
    assert events == ["notice", "state", "end"]
    assert "start the console with the requester" in body


def test_live__with_the_requesters_key__says_the_worker_is_not_answering(market: SmallMarket) -> None:
    reader = MarketReader(market.contracts, requester=dev_account(REQUESTER), probe_timeout_s=0.3)
    try:
        with TestClient(create_app(reader, poll_s=0.05)) as client:
            body = client.get("/job/2/live").text
        assert "event: end" in body
        assert "not answering" in body and "127.0.0.1:" in body
    finally:
        reader.close()


def test_index_cache__a_restarted_console_reads_only_new_blocks(market: SmallMarket, tmp_path: Path) -> None:
    first = MarketReader(market.contracts, data_dir=tmp_path)
    first.sync()
    logs, synced = len(first.ledger.logs), first.ledger.synced
    first.close()
    second = MarketReader(market.contracts, data_dir=tmp_path)
    try:
        assert second.ledger.synced == synced and len(second.ledger.logs) == logs  # from the file
        assert second.ledger.pools == [market.pool.address]
        with TestClient(create_app(second)) as client:
            assert client.get("/job/3").status_code == 200
    finally:
        second.close()
    [path] = tmp_path.glob("index-*.sqlite")
    assert market.contracts.market.address.lower() in path.name


def test_index_cache__another_chain_at_the_same_addresses__is_rebuilt(market: SmallMarket, tmp_path: Path) -> None:
    from marketplace.chain.client import Chain
    from marketplace.contracts.devmarket import setup_dev_market

    first = MarketReader(market.contracts, data_dir=tmp_path)
    first.sync()
    first.close()
    fresh = setup_dev_market(Chain.embedded(), accounts=12)  # the same deployer, so the same addresses
    assert fresh.market.address == market.contracts.market.address
    fresh.chain.time_travel(1)
    again = MarketReader(fresh, data_dir=tmp_path)
    try:
        again.sync()
        assert again.ledger.jobs == {}
    finally:
        again.close()


def test_chain_down__every_page_says_so_with_503(tmp_path: Path) -> None:
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    from marketplace.chain.client import Chain
    from marketplace.chain.jsonrpc_server import JsonRpcChainServer
    from marketplace.contracts.deployment import load_contracts
    from marketplace.contracts.devmarket import setup_dev_market

    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    local = setup_dev_market(Chain(Web3(provider), embedded_tester=tester), accounts=3)
    server = JsonRpcChainServer(provider, tester, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}"
    remote = load_contracts(Chain.connect(url), replace(local.deployment, rpc_url=url))
    reader = MarketReader(remote, data_dir=tmp_path)
    try:
        with TestClient(create_app(reader)) as client:
            assert client.get("/market").status_code == 200
            server.shutdown()
            for page in ("/market", "/job/1", f"/account/{dev_account(2).address}", "/market/chart.json"):
                response = client.get(page)
                assert response.status_code == 503, page
                assert "Traceback" not in response.text
            assert "Chain not answering" in client.get("/market").text
    finally:
        reader.close()


def test_cli__console_without_a_deployment__one_line_and_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["console", "--deployment", str(tmp_path / "none.json")], obj={})
    assert result.exit_code != 0
    assert result.output.strip().startswith("error: no deployment file at")


def test_cli__console_and_demo_console_are_commands() -> None:
    assert "--rpc-url" in CliRunner().invoke(cli, ["console", "--help"]).output
    assert "--console" in CliRunner().invoke(cli, ["demo", "--help"]).output


def test_chain_logs__on_the_embedded_chain__are_what_eth_getlogs_answers(market: SmallMarket) -> None:
    c = market.contracts
    addresses = [c.market.address, c.registry.address, market.pool.address]
    last = c.chain.block_number()
    with c.chain.locked():
        slow = list(c.chain.w3.eth.get_logs({"address": addresses, "fromBlock": 0, "toBlock": last}))
    fast = c.chain.logs(addresses, 0, last)

    def key(g: dict) -> tuple:
        topics = [bytes(t) for t in g["topics"]]
        return g["blockNumber"], g["logIndex"], g["address"], topics, bytes(g["data"]), bytes(g["transactionHash"])

    assert len(fast) > 20 and sorted(map(key, fast)) == sorted(map(key, slow))
