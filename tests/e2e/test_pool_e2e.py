"""A provider pool across processes: `flopex chain up`, two `flopex pool member start` workers, a
`flopex pool operator start` daemon; the requester and a verifier act from the test process.

The pool wins two instant jobs. The first runs on member A (honest): A is paid the income less the
operator's fee, the operator gets the fee, B nothing, and no stake moves. The second runs on member
B, whose daemon commits a root its worker did not produce: the requester's check fails, it
disputes, a verifier rejects, and B's stake (alone) answers for the slash while A keeps its pay.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts, Deployment, load_contracts
from marketplace.contracts.pool import Pool, load_pool
from marketplace.requester.requester import JobOptions, JobOutcome, Requester
from marketplace.types import ONE_TOKEN, Auction, Outcome, Policy, SlotStatus, parse_tokens, slot_value
from tests.e2e.procs import FLOPEX, Proc, start_chain

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "train_mlp"
REQUESTER, OPERATOR, HONEST, CHEAT, VERIFIER, STRANGER = 2, 3, 4, 5, 6, 7
FEE_BPS, STAKE, PRICE = 1_000, 150 * ONE_TOKEN, parse_tokens("0.2")


def _flopex(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FLOPEX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"FLOPEX_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


@dataclass
class PoolWorld:
    home: Path
    url: str
    pool_address: str
    procs: list[Proc]

    def contracts(self) -> Contracts:
        return load_contracts(Chain.connect(self.url), Deployment.load(self.home / "deployment.json"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, has_bwrap: bool) -> Iterator[PoolWorld]:
    """A local chain and a pool created from the command line (operator: dev account 3)."""
    home = tmp_path_factory.mktemp("pool")
    chain, url = start_chain(home)
    procs = [chain]
    try:
        created = _flopex(
            home,
            "pool",
            "create",
            "--dev",
            str(OPERATOR),
            "--fee-bps",
            str(FEE_BPS),
            "--min-stake",
            "100",
            "--unbonding",
            "60",
            "--json",
        )
        assert created.returncode == 0, created.stderr
        yield PoolWorld(home, url, json.loads(created.stdout)["pool"], procs)
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_pool_cli__bad_input__one_clear_line_and_a_non_zero_exit(world: PoolWorld) -> None:
    stranger = dev_account(STRANGER).address
    cases = [
        (("pool", "show", stranger), f"error: no pool of this market at {stranger}"),
        (("pool", "show", "0x1234"), "error: not an address"),
        (
            (
                "pool",
                "join",
                world.pool_address,
                "--dev",
                str(STRANGER),
                "--stake",
                "1",
                "--gpus",
                "1",
                "--memory-mb",
                "1024",
                "--endpoint",
                "127.0.0.1:1",
                "--signer",
                stranger,
            ),
            "error: stake 1 FLOP is below the pool's minimum of 100 FLOP",
        ),
        (
            ("pool", "leave", world.pool_address, "--dev", str(STRANGER)),
            f"error: {stranger} is not a member of pool {world.pool_address}",
        ),
        (
            ("pool", "register", world.pool_address, "--dev", str(STRANGER)),
            f"error: {stranger} is not the operator of pool {world.pool_address}",
        ),
    ]
    for args, message in cases:
        out = _flopex(world.home, *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, (args, out.stderr)


def _member(world: PoolWorld, dev: int, *extra: str) -> Proc:
    proc = Proc(
        [
            "pool",
            "member",
            "start",
            world.pool_address,
            "--dev",
            str(dev),
            "--stake",
            "150",
            "--data-dir",
            str(world.home / f"member-{dev}"),
            "--no-withdraw",
            *extra,
        ],
        world.home,
        world.home / f"member-{dev}.log",
    )
    world.procs.append(proc)
    proc.wait_for_line("serving", timeout=120)
    return proc


def _booked(pool: Pool, contracts: Contracts, job_id: int) -> None:
    contracts.chain.wait_until(lambda: pool.booked(job_id, 0), timeout=60, poll=0.3)


def test_pool_of_two_member_processes__the_runner_is_paid__the_cheat_is_slashed__the_other_keeps_its_pay(
    world: PoolWorld,
) -> None:
    home = world.home
    _member(world, HONEST)  # joins first: the first in the pool's list takes the first job
    _member(world, CHEAT, "--unsafe-cheat-root")
    operator = Proc(
        [
            "pool",
            "operator",
            "start",
            world.pool_address,
            "--dev",
            str(OPERATOR),
            "--price",
            "0.2",
            "--no-withdraw",
            "--state-dir",
            str(home / "operator"),
        ],
        home,
        home / "operator.log",
    )
    world.procs.append(operator)
    operator.wait_for_line("bidding for pool", timeout=120)

    contracts = world.contracts()
    pool = load_pool(contracts, world.pool_address)
    honest, cheat, op = (dev_account(i).address for i in (HONEST, CHEAT, OPERATOR))
    assert contracts.registry.is_provider(pool.address)
    assert [m.stake for m in pool.members()] == [STAKE, STAKE]
    # Members serve TLS by default, their key pinned in the endpoint the pool lists; one daemon a folder.
    assert all("#tls-spki=" in m.endpoint for m in pool.members())
    again = _flopex(
        home,
        "pool",
        "member",
        "start",
        world.pool_address,
        "--dev",
        str(HONEST),
        "--data-dir",
        str(home / f"member-{HONEST}"),
    )
    assert again.returncode == 1 and again.stderr.count("\n") == 1
    assert f"member-{HONEST} is in use by a running daemon (pool member pid" in again.stderr
    requester = Requester(contracts, dev_account(REQUESTER))
    options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, bid_window_s=30, challenge_window_s=30)

    # Job 1: the pool takes it, member A runs it, the requester checks and accepts it; it is paid.
    job1 = requester.submit(TRAIN, options)
    outcome = requester.follow(job1, home / "out-1", timeout_s=180)
    [bill] = outcome.slots
    assert (bill["provider"], bill["status"], bill["price"]) == (pool.address, "paid", PRICE)
    assert bill["gpu_seconds"] > 0 and bill["paid"] == slot_value(PRICE, bill["gpu_seconds"])
    assert pool.assignment(job1, 0) == honest
    assert (home / "out-1" / "slot-0" / "output" / "model.safetensors").is_file()
    _booked(pool, contracts, job1)
    income = bill["paid"] - bill["fee"]
    fee = income * FEE_BPS // 10_000
    assert (pool.credits(honest), pool.credits(cheat), pool.credits(op)) == (income - fee, 0, fee)
    assert (pool.member(honest).stake, pool.member(cheat).stake) == (STAKE, STAKE)
    assert pool.member(honest).gpu_seconds == bill["gpu_seconds"]

    # A verifier, registered from the test process.
    verifier = dev_account(VERIFIER)
    contracts.token.approve(verifier, contracts.registry.address, 100 * ONE_TOKEN)
    contracts.registry.stake(verifier, 100 * ONE_TOKEN)
    contracts.registry.register_verifier(verifier)
    contracts.require_court().join(verifier)

    # Job 2: member B's turn; it commits a root its worker did not produce. The requester's check
    # fails and it disputes; the verifier rejects; the slot is slashed and the slash booked to B.
    job2 = requester.submit(TRAIN, options)
    followed: list[JobOutcome] = []
    follower = threading.Thread(target=lambda: followed.append(requester.follow(job2, home / "out-2", timeout_s=180)))
    follower.start()
    contracts.chain.wait_until(
        lambda: contracts.market.slot(job2, 0).status == SlotStatus.DISPUTED, timeout=180, poll=0.3
    )
    assert pool.assignment(job2, 0) == cheat
    # The court draws its only verifier, which rejects; the ruling reaches the market after the appeal window.
    contracts.require_court().decide_slot_alone(verifier, job2, contracts.market.spec(job2), 0, Outcome.REJECT)
    follower.join(timeout=120)
    [bill2] = followed[0].slots
    assert (bill2["provider"], bill2["status"]) == (pool.address, "slashed")
    assert bill2["slashed"] == slot_value(PRICE, contracts.market.spec(job2).max_gpu_seconds) + 50 * ONE_TOKEN
    _booked(pool, contracts, job2)
    assert pool.member(cheat).stake == STAKE - bill2["slashed"]  # the culprit's stake covers it all
    assert pool.member(honest).stake == STAKE
    assert (pool.credits(honest), pool.credits(cheat), pool.credits(op)) == (income - fee, 0, fee)
    assert contracts.registry.total_stake(pool.address) == 2 * STAKE - bill2["slashed"]

    # `pool show` tells the same story.
    shown = _flopex(home, "pool", "show", pool.address, "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    by_address = {m["address"]: m for m in summary["members"]}
    assert (by_address[honest]["credit"], by_address[cheat]["credit"], summary["operator_credit"]) == (
        income - fee,
        0,
        fee,
    )
    assert by_address[cheat]["stake"] == STAKE - bill2["slashed"]
    assert [(a["job_id"], a["member"], a["status"], a["booked"]) for a in summary["assignments"]] == [
        (job1, honest, "paid", True),
        (job2, cheat, "slashed", True),
    ]
    assert summary["unattributed"] == {"income": 0, "loss": 0}

    # From the command line: A withdraws its pay and starts to leave; B has no pay to withdraw.
    balance = contracts.token.balance_of(honest)
    paid_out = _flopex(home, "pool", "withdraw", pool.address, "--dev", str(HONEST))
    assert paid_out.returncode == 0, paid_out.stderr
    assert contracts.token.balance_of(honest) == balance + income - fee and pool.credits(honest) == 0
    nothing = _flopex(home, "pool", "withdraw", pool.address, "--dev", str(CHEAT))
    assert nothing.returncode == 1 and nothing.stderr == f"error: {cheat} has no credit in pool {pool.address}\n"
    left = _flopex(home, "pool", "leave", pool.address, "--dev", str(HONEST), "--amount", "50")
    assert left.returncode == 0, left.stderr
    assert (pool.member(honest).stake, pool.member(honest).unbonding) == (STAKE - 50 * ONE_TOKEN, 50 * ONE_TOKEN)
