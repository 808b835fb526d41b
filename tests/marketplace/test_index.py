"""The compute price index, from a history built on the embedded chain with time travel."""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from flopex.cli.main import cli
from marketplace.chain.client import Chain, dev_account
from marketplace.chain.jsonrpc_server import JsonRpcChainServer
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.events import SlotLeased
from marketplace.errors import ConfigError
from marketplace.market.index import compute_index, index_document, parse_window, read_history, twap
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Offer, Policy, slot_value

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

REQUESTER = 2
H100_A, H100_B, EPYC_A, EPYC_B = 3, 4, 5, 6
GPU, CPU = "cuda:H100", "cpu:EPYC"


@dataclass
class World:
    contracts: Contracts
    times: dict[str, int]  # lease label -> block timestamp
    now: int
    settled_at: int


def _register(contracts: Contracts, index: int, model: str, kind: DeviceKind, floor: int) -> None:
    provider = dev_account(index)
    contracts.token.approve(provider, contracts.registry.address, 200 * ONE_TOKEN)
    contracts.registry.stake(provider, 200 * ONE_TOKEN)
    offer = Offer(model, kind, 1, 8192, 0, floor * ONE_TOKEN, "127.0.0.1:7000", provider.address)
    contracts.registry.register_provider(provider, offer)


def _lease(contracts: Contracts, provider: int, kind: DeviceKind, max_gpu_seconds: int) -> tuple[int, int]:
    """Post an instant job and have ``provider`` take it; returns (job id, lease time)."""
    now = contracts.chain.now()
    spec = JobSpec(
        requester=dev_account(REQUESTER).address,
        bundle_hash=b"\x42" * 32,
        device_kind=kind,
        gpus=1,
        min_memory_mb=1024,
        policy=Policy.NONE,
        auction=Auction.INSTANT,
        redundancy=1,
        max_price=10 * ONE_TOKEN,
        max_gpu_seconds=max_gpu_seconds,
        bid_deadline=now + 600,
        reveal_deadline=now + 600,
        run_duration=8 * 86_400,  # the longest run the market allows by default
        challenge_window=600,
    )
    requester = dev_account(REQUESTER)
    contracts.token.approve(requester, contracts.market.address, spec.escrow)
    job_id = contracts.market.post_job(requester, spec)
    receipt = contracts.market.take_job(dev_account(provider), job_id)
    [leased] = [e for e in contracts.market.events_in(receipt) if isinstance(e, SlotLeased)]
    return job_id, int(contracts.chain.w3.eth.get_block(leased.block_number)["timestamp"])


@pytest.fixture(scope="module")
def world() -> World:
    """Five leases in two classes over about 1.5 hours, and one settled slot.

    cuda:H100 at 4 (a), 5 (b) and 4 (d) tokens/GPU-h; cpu:EPYC at 1 (c) and 2 (e).
    """
    contracts = setup_dev_market(Chain.embedded(), accounts=7)
    _register(contracts, H100_A, "H100", DeviceKind.CUDA, 4)
    _register(contracts, H100_B, "H100", DeviceKind.CUDA, 5)
    _register(contracts, EPYC_A, "EPYC", DeviceKind.CPU, 1)
    _register(contracts, EPYC_B, "EPYC", DeviceKind.CPU, 2)
    chain, times = contracts.chain, {}
    job_a, times["a"] = _lease(contracts, H100_A, DeviceKind.CUDA, 3_600)
    chain.time_travel(1_800)
    _, times["b"] = _lease(contracts, H100_B, DeviceKind.CUDA, 3_600)
    _, times["c"] = _lease(contracts, EPYC_A, DeviceKind.CPU, 1_800)
    chain.time_travel(3_600)
    _, times["d"] = _lease(contracts, H100_A, DeviceKind.CUDA, 7_200)
    _, times["e"] = _lease(contracts, EPYC_B, DeviceKind.CPU, 3_600)
    market = contracts.market
    market.commit_result(dev_account(H100_A), job_a, 0, b"\x01" * 32, 100)
    market.accept_result(dev_account(REQUESTER), job_a, 0)
    receipt = market.settle(dev_account(REQUESTER), job_a, 0)
    settled_at = int(chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"])
    # Reserved ahead: an H100 hour two hours out, sold at 3 tokens/GPU-h, resold for 3.6 tokens.
    reservations = contracts.require_reservations()
    rid = reservations.offer(dev_account(H100_B), chain.now() + 7_200, 3_600, 1, 3 * ONE_TOKEN)
    reservations.buy_with_permit(dev_account(REQUESTER), rid, contracts.token, deadline=chain.now() + 3_600)
    reservations.list_for_resale(dev_account(REQUESTER), rid, 36 * ONE_TOKEN // 10)
    contracts.token.approve(dev_account(EPYC_A), reservations.address, 36 * ONE_TOKEN // 10)
    reservations.buy_resale(dev_account(EPYC_A), rid)
    reservations.offer(dev_account(H100_A), chain.now() + 86_400, 7_200, 1, 2 * ONE_TOKEN)  # nobody buys it
    now = chain.time_travel(600)
    return World(contracts, times, now, settled_at)


def test_twap__is_the_floor_of_the_time_weighted_step_function() -> None:
    points = [(100, 40), (160, 50), (160, 70), (400, 10)]
    # 70 stands from 160 (the last of two leases at 160); from start 130: 40 for 30 s, 70 for 240, 10 for 100.
    assert twap(points, 130, 500) == ((40 * 30 + 70 * 240 + 10 * 100) // 370, 370)
    assert twap(points, None, 500) == ((40 * 60 + 70 * 240 + 10 * 100) // 400, 400)
    assert twap(points, 450, 500) == (10, 50)  # the price standing at the window's opening counts
    assert twap(points, 0, 50) == (None, 0)
    assert twap([(500, 9)], None, 500) == (9, 0)


def test_windows__parse_durations_and_refuse_nonsense() -> None:
    assert [parse_window(w) for w in ("90s", "30m", "1h", "24h", "7d", "all")] == [
        90,
        1_800,
        3_600,
        86_400,
        604_800,
        None,
    ]
    for bad in ("", "0h", "-1h", "1y", "h"):
        with pytest.raises(ConfigError):
            parse_window(bad)


def test_index__twap_volume_and_prices_per_class_match_the_hand_computed_values(world: World) -> None:
    t, now, T = world.times, world.now, ONE_TOKEN
    history = read_history(world.contracts)
    assert history.now == now and history.classes == [CPU, GPU]
    index = compute_index(history, ["1h", "24h", "all"])

    gpu_all = index.windows["all"][GPU]
    assert gpu_all.twap == (4 * T * (t["b"] - t["a"]) + 5 * T * (t["d"] - t["b"]) + 4 * T * (now - t["d"])) // (
        now - t["a"]
    )
    assert gpu_all.twap_seconds == now - t["a"]
    assert (gpu_all.leases, gpu_all.min, gpu_all.max, gpu_all.open, gpu_all.last) == (3, 4 * T, 5 * T, 4 * T, 4 * T)
    assert gpu_all.leased_gpu_seconds == 3_600 + 3_600 + 7_200
    assert gpu_all.leased_value == 4 * T + 5 * T + 8 * T
    assert gpu_all.vwap == (4 * T * 3_600 + 5 * T * 3_600 + 4 * T * 7_200) // 14_400
    assert (gpu_all.settled_slots, gpu_all.settled_gpu_seconds, gpu_all.settled_paid) == (
        1,
        100,
        slot_value(4 * T, 100),
    )
    assert index.windows["24h"][GPU].twap == gpu_all.twap  # the whole history is inside 24 h

    start = now - 3_600
    assert t["b"] < start < t["d"]
    gpu_1h = index.windows["1h"][GPU]
    assert gpu_1h.twap == (5 * T * (t["d"] - start) + 4 * T * (now - t["d"])) // 3_600
    assert (gpu_1h.leases, gpu_1h.open, gpu_1h.min, gpu_1h.max, gpu_1h.last) == (1, 5 * T, 4 * T, 4 * T, 4 * T)
    assert (gpu_1h.leased_gpu_seconds, gpu_1h.leased_value) == (7_200, 8 * T)
    assert gpu_1h.settled_gpu_seconds == (100 if world.settled_at >= start else 0)

    cpu_all, cpu_1h = index.windows["all"][CPU], index.windows["1h"][CPU]
    assert cpu_all.twap == (1 * T * (t["e"] - t["c"]) + 2 * T * (now - t["e"])) // (now - t["c"])
    assert t["c"] < start < t["e"]
    assert cpu_1h.twap == (1 * T * (t["e"] - start) + 2 * T * (now - t["e"])) // 3_600
    assert (cpu_all.leases, cpu_all.leased_gpu_seconds, cpu_all.leased_value) == (2, 5_400, T // 2 + 2 * T)
    assert (cpu_1h.leases, cpu_1h.leased_gpu_seconds, cpu_1h.settled_gpu_seconds) == (1, 3_600, 0)


@pytest.mark.slow
def test_index__forward_prices_of_reserved_capacity_are_indexed_in_the_providers_class(world: World) -> None:
    T = ONE_TOKEN
    history = read_history(world.contracts)
    assert [(r.sale, r.price, r.value, r.gpu_seconds) for r in history.reservations] == [
        ("bought", 3 * T, 3 * T, 3_600),
        ("resold", 36 * T // 10, 36 * T // 10, 3_600),
    ]
    assert {r.device_class for r in history.reservations} == {GPU}
    for window in ("1h", "all"):
        stats = compute_index(history, [window]).windows[window][GPU]
        assert (stats.reservations, stats.reserved_gpu_seconds) == (2, 7_200)
        assert stats.reserved_vwap == (3 * T * 3_600 + 36 * T // 10 * 3_600) // 7_200
        assert stats.reserved_last == 36 * T // 10
    assert compute_index(history, ["1h"]).windows["1h"][CPU].reservations == 0
    document = index_document(compute_index(history, ["all"]))
    assert [row["sale"] for row in document["reservations"][GPU]] == ["bought", "resold"]
    assert document["windows"]["all"][GPU]["reserved_last"] == 36 * T // 10


@pytest.mark.slow
def test_index__as_of_an_earlier_block_ignores_what_came_later(world: World) -> None:
    contracts = world.contracts
    leases = contracts.market.get_events("SlotLeased", contracts.deployment.start_block)
    second = leases[1].block_number  # the lease of job b: only a and b exist then
    index = compute_index(read_history(contracts, block=second), ["all"])
    t = world.times
    assert list(index.windows["all"]) == [GPU]
    stats = index.windows["all"][GPU]
    assert (stats.leases, stats.last, stats.window_end) == (2, 5 * ONE_TOKEN, t["b"])
    assert stats.twap == 4 * ONE_TOKEN  # 4 stood from a to b; 5 has stood for no time yet
    assert stats.reservations == 0 and stats.reserved_last is None  # sold later


@pytest.fixture(scope="module")
def deployment_file(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`flopex chain up`'s set-up in process: the world's chain served over JSON-RPC, and its file."""
    chain = world.contracts.chain
    server = JsonRpcChainServer(chain.w3.provider, chain._tester, port=0)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    path = tmp_path_factory.mktemp("chain") / "deployment.json"
    replace(world.contracts.deployment, rpc_url=f"http://127.0.0.1:{server.port}").save(path)
    yield path
    server.shutdown()


@pytest.mark.slow
def test_cli_market_index_json__is_the_index_read_over_json_rpc(world: World, deployment_file: Path) -> None:
    result = CliRunner().invoke(
        cli, ["market", "index", "--json", "--deployment", str(deployment_file)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    expected = index_document(compute_index(read_history(world.contracts), ["1h", "24h", "all"]))
    assert document == json.loads(json.dumps(expected))
    assert document["classes"] == [CPU, GPU]
    assert document["windows"]["all"][GPU]["leased_gpu_seconds"] == 14_400
    assert [row["price"] for row in document["series"][GPU]] == [4 * ONE_TOKEN, 5 * ONE_TOKEN, 4 * ONE_TOKEN]

    one = CliRunner().invoke(cli, ["market", "index", "--json", "--window", "1h", "--deployment", str(deployment_file)])
    assert list(json.loads(one.output)["windows"]) == ["1h"]
    text = CliRunner().invoke(cli, ["market", "index", "--deployment", str(deployment_file)])
    assert text.exit_code == 0 and GPU in text.output and "twap" in text.output
    bad = CliRunner().invoke(cli, ["market", "index", "--window", "1y", "--deployment", str(deployment_file)])
    assert bad.exit_code == 1 and "window '1y'" in bad.output


@pytest.mark.slow
def test_cli_market__without_a_subcommand_still_lists_the_market(deployment_file: Path) -> None:
    result = CliRunner().invoke(cli, ["market", "--json", "--deployment", str(deployment_file)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {"open_jobs", "providers", "clearing_prices", "reservations_for_sale"}
    assert document["clearing_prices"]["cuda"] == [4 * ONE_TOKEN, 5 * ONE_TOKEN, 4 * ONE_TOKEN]
    [offer] = document["reservations_for_sale"]  # the unbought one; the bought and resold one is held
    assert (offer["provider"], offer["price"], offer["duration"], offer["holder"]) == (
        dev_account(H100_A).address,
        2 * ONE_TOKEN,
        7_200,
        None,
    )
    # options given before the subcommand reach it too
    index = CliRunner().invoke(cli, ["market", "--deployment", str(deployment_file), "index", "--json"])
    assert index.exit_code == 0 and json.loads(index.output)["classes"] == [CPU, GPU]


@pytest.mark.slow
def test_cli_market_report__writes_a_png_chart(deployment_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    result = CliRunner().invoke(
        cli,
        ["market", "report", "-o", str(out), "--window", "all", "--json", "--deployment", str(deployment_file)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["report"] == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 400
