"""Helpers for the contract suite: constants, the JobSpec/Offer tuples, deployment, and
``Flow``, which wraps the lifecycle's multi-step paths (post, sealed auction, instant take,
commit, settle) so that tests read as the lifecycle in DESIGN.md.

Actors are named addresses (``owner``, ``treasury``, ``requester``, ``provider``, ``provider2``,
``provider3``, ``verifier``, ``stranger``); the fixtures in ``conftest.py`` give each ``FUNDS``
tokens and approve the market and the registry for them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import boa
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

ROOT = Path(__file__).resolve().parents[2]
# Overridable so that a mutated copy of the sources can be run against the suite.
CONTRACTS = Path(os.environ.get("FLOPEX_CONTRACTS_DIR", ROOT / "contracts"))

E18 = 10**18
FUNDS = 1_000_000 * E18
MAX_UINT = 2**256 - 1

MIN_PROVIDER_STAKE = 1_000 * E18
MIN_VERIFIER_STAKE = 500 * E18
UNBONDING_PERIOD = 7 * 86_400
FEE_BPS = 100
DISPUTE_BOND = 50 * E18
BASE_SLASH = 100 * E18
SLASH_REQUESTER_BPS = 5_000

DEVICE_CPU, DEVICE_CUDA = 0, 1
POLICY_NONE, POLICY_REDUNDANT, POLICY_REPLAY, POLICY_FREIVALDS, POLICY_OPTIMISTIC = range(5)
AUCTION_SEALED, AUCTION_INSTANT = 0, 1
OUTCOME_ACCEPT, OUTCOME_REJECT, OUTCOME_VOID = 0, 1, 2

# Vyper flags: bit values of JobMarket's JobStatus and SlotStatus.
JOB_OPEN, JOB_LEASED, JOB_CLOSED, JOB_EXPIRED, JOB_CANCELLED = (1 << i for i in range(5))
(
    SLOT_ASSIGNED,
    SLOT_COMMITTED,
    SLOT_DISPUTED,
    SLOT_ACCEPTED,
    SLOT_REJECTED,
    SLOT_VOIDED,
    SLOT_PAID,
    SLOT_SLASHED,
    SLOT_REFUNDED,
    SLOT_RELEASED,
    SLOT_NO_SHOW,
) = (1 << i for i in range(11))
NO_SHOW_ROOT = (1).to_bytes(32, "big")
CHANGE_DELAY = 2 * 86_400

DEFAULT_PRICE_FLOOR = 4 * E18
ROOT_HASH = b"\x11" * 32


@functools.cache
def deployer(name: str) -> Any:
    """``contracts/<name>.vy`` compiled once per test session.

    ``boa.load`` parses, analyses and compiles the source (and every snekmate module it imports)
    on every call, a second or more per contract; every deployment of the suite goes through
    here instead. It is still compiled from the source, so titanoboa's source-level revert
    reasons (``boa.reverts("...")``) and stack traces work as with ``boa.load``.
    """
    path = CONTRACTS / f"{name}.vy"
    return boa.loads_partial(path.read_text(), name=name, filename=str(path))


def load(name: str, *args: Any) -> Any:
    """Deploys ``contracts/<name>.vy`` with constructor ``args``, like ``boa.load`` but compiled once."""
    return deployer(name).deploy(*args, contract_name=name)


@functools.cache
def _compiled_source(source: str) -> Any:
    return boa.loads_partial(source)


def loads(source: str, *args: Any) -> Any:
    """Deploys Vyper ``source`` with constructor ``args``, like ``boa.loads`` but compiled once."""
    return _compiled_source(source).deploy(*args)


class Spec(NamedTuple):
    """JobMarket's ``JobSpec`` in ABI field order; boa takes it as the struct tuple."""

    requester: str
    bundle_hash: bytes
    device_kind: int
    gpus: int
    min_memory_mb: int
    policy: int
    auction: int
    redundancy: int
    max_price: int
    max_gpu_seconds: int
    bid_deadline: int
    reveal_deadline: int
    run_duration: int
    challenge_window: int


class Offer(NamedTuple):
    """ProviderRegistry's ``Offer`` in ABI field order."""

    device_model: str
    device_kind: int
    gpu_count: int
    memory_mb: int
    claimed_gflops: int
    price_floor: int
    endpoint: str
    signer: str


def now() -> int:
    """The chain's current block timestamp."""
    return int(boa.env.evm.patch.timestamp)


def travel_to(timestamp: int) -> None:
    """Moves the chain's clock forward to ``timestamp`` (never backwards)."""
    delta = timestamp - now()
    assert delta >= 0, "cannot travel back in time"
    if delta:
        boa.env.time_travel(seconds=delta)


def queue_owner_change(contract: Any, owner: str, name: str, *args: Any) -> None:
    """Queues an owner's delayed change ``name(*args)`` and waits out ``CHANGE_DELAY``."""
    with boa.env.prank(owner):
        contract.queue_change(keccak(getattr(contract, name).prepare_calldata(*args)))
    boa.env.time_travel(seconds=CHANGE_DELAY)


def owner_change(contract: Any, owner: str, name: str, *args: Any) -> Any:
    """Makes an owner's delayed change: queues its calldata, waits out ``CHANGE_DELAY``, makes it."""
    queue_owner_change(contract, owner, name, *args)
    with boa.env.prank(owner):
        return getattr(contract, name)(*args)


def owner_change_queued_earlier(contract: Any, owner: str, name: str, *args: Any) -> Any:
    """Makes now an owner's change as if it had been queued ``CHANGE_DELAY`` earlier.

    The change is queued, the clock moved past the delay for the change alone and set back: for
    tests of what a change does to slots already under way, whose windows are shorter than the delay.
    """
    t = now()
    with boa.env.prank(owner):
        contract.queue_change(keccak(getattr(contract, name).prepare_calldata(*args)))
        boa.env.evm.patch.timestamp = t + CHANGE_DELAY
        try:
            return getattr(contract, name)(*args)
        finally:
            boa.env.evm.patch.timestamp = t


def value(price: int, gpu_seconds: int) -> int:
    """``JobMarket._value``: token units for ``gpu_seconds`` at ``price`` per GPU-hour."""
    return price * gpu_seconds // 3_600


def make_spec(requester: str, **overrides: Any) -> Spec:
    """A valid JobSpec relative to the current block time; keyword arguments override fields."""
    t = now()
    fields: dict[str, Any] = {
        "requester": requester,
        "bundle_hash": b"\xab" * 32,
        "device_kind": DEVICE_CUDA,
        "gpus": 1,
        "min_memory_mb": 16_000,
        "policy": POLICY_REPLAY,
        "auction": AUCTION_SEALED,
        "redundancy": 1,
        "max_price": 10 * E18,
        "max_gpu_seconds": 3_600,
        "bid_deadline": t + 3_600,
        "reveal_deadline": t + 7_200,
        "run_duration": 86_400,
        "challenge_window": 3_600,
    }
    fields.update(overrides)
    return Spec(**fields)


def make_offer(account: str, **overrides: Any) -> Offer:
    """A valid CUDA offer whose receipts ``account`` signs; keyword arguments override fields."""
    fields: dict[str, Any] = {
        "device_model": "NVIDIA H200",
        "device_kind": DEVICE_CUDA,
        "gpu_count": 8,
        "memory_mb": 141_000,
        "claimed_gflops": 60_000,
        "price_floor": DEFAULT_PRICE_FLOOR,
        "endpoint": "127.0.0.1:50051",
        "signer": account,
    }
    fields.update(overrides)
    return Offer(**fields)


def salt_for(provider: str, price: int) -> bytes:
    """A deterministic per-bid salt, so tests can reveal what they committed."""
    return bytes.fromhex(provider[2:].lower()) + price.to_bytes(12, "big")


def events(contract: Any, name: str) -> list[Any]:
    """The decoded events called ``name`` that ``contract`` emitted in the last call."""
    return [e for e in contract.get_logs() if type(e).__name__ == name]


def one_event(contract: Any, name: str) -> Any:
    """The single event called ``name`` emitted by ``contract`` in the last call."""
    found = events(contract, name)
    assert len(found) == 1, f"expected one {name}, got {contract.get_logs()}"
    return found[0]


def sign_permit(
    token: Any, key: bytes, spender: str, amount: int, deadline: int, nonce: int | None = None
) -> tuple[int, bytes, bytes]:
    """Signs an EIP-2612 permit for ``token`` with ``key``; returns (v, r, s)."""
    owner = Account.from_key(key).address
    data = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ],
        },
        "primaryType": "Permit",
        "domain": {
            "name": "flopex",
            "version": "1",
            "chainId": boa.env.evm.patch.chain_id,
            "verifyingContract": token.address,
        },
        "message": {
            "owner": owner,
            "spender": spender,
            "value": amount,
            "nonce": token.nonces(owner) if nonce is None else nonce,
            "deadline": deadline,
        },
    }
    signable = encode_typed_data(full_message=data)
    signed = Account.sign_message(signable, key)
    # The domain we built must be the token's own, or every permit would fail.
    domain = keccak(
        encode(
            ["bytes32", "bytes32", "bytes32", "uint256", "address"],
            [
                keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak(text="flopex"),
                keccak(text="1"),
                data["domain"]["chainId"],
                token.address,
            ],
        )
    )
    assert domain == token.DOMAIN_SEPARATOR()
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def assert_solvent(market: Any, token: Any, job_ids: list[int]) -> None:
    """The market holds exactly what it owes: the escrow of ``job_ids`` (all jobs posted in the
    test) plus every credit; a job that reached a terminal state holds nothing."""
    assert market.job_count() == len(job_ids)
    escrows = [market.jobs(j).escrow for j in job_ids]
    assert token.balanceOf(market.address) == sum(escrows) + market.total_credits()
    for j, escrow in zip(job_ids, escrows, strict=True):
        if market.jobs(j).status in (JOB_CLOSED, JOB_EXPIRED, JOB_CANCELLED):
            assert escrow == 0, f"job {j} ended with {escrow} left in escrow"


@dataclass
class Deployment:
    """The three contracts and who deployed them."""

    token: Any
    registry: Any
    market: Any
    owner: str
    treasury: str


def deploy(owner: str, treasury: str, court: str | None = None) -> Deployment:
    """Deploys token, registry and market as ``owner`` and wires the registry to the market.

    ``court`` is the account the market takes rulings from: the market's own tests stand an
    account in for ``VerifierCourt`` (its tests, ``test_court.py``, deploy the real one)."""
    with boa.env.prank(owner):
        token = load("ComputeToken", "Compute", "FLOP", "flopex", "1")
    d = deploy_over(token, owner, treasury, court)
    for contract in (d.token, d.registry, d.market):
        assert len(boa.env.get_code(contract.address)) > 0
    return d


def deploy_over(token: Any, owner: str, treasury: str, court: str | None = None) -> Deployment:
    """A registry and a market over ``token`` (any ERC-20-like contract), deployed and wired as
    :func:`deploy` does."""
    with boa.env.prank(owner):
        registry = load(
            "ProviderRegistry",
            token.address,
            MIN_PROVIDER_STAKE,
            MIN_VERIFIER_STAKE,
            UNBONDING_PERIOD,
        )
        market = load(
            "JobMarket",
            token.address,
            registry.address,
            treasury,
            FEE_BPS,
            DISPUTE_BOND,
            BASE_SLASH,
            SLASH_REQUESTER_BPS,
        )
        registry.set_market(market.address)
        if court is not None:
            market.set_court(court)
    return Deployment(token, registry, market, owner, treasury)


def fund(d: Deployment, account: str, amount: int = FUNDS) -> None:
    """Mints ``amount`` to ``account`` and approves the market and the registry for all of it."""
    with boa.env.prank(d.owner):
        d.token.mint(account, amount)
    with boa.env.prank(account):
        d.token.approve(d.market.address, MAX_UINT)
        d.token.approve(d.registry.address, MAX_UINT)


class Flow:
    """The lifecycle's multi-step paths, as the actors would run them."""

    def __init__(self, d: Deployment) -> None:
        self.d = d
        self.token, self.registry, self.market = d.token, d.registry, d.market

    # -- registry

    def stake(self, account: str, amount: int) -> None:
        with boa.env.prank(account):
            self.registry.stake(amount)

    def register_provider(self, provider: str, stake: int = MIN_PROVIDER_STAKE, **offer: Any) -> Offer:
        """Stakes ``stake`` (if any) and registers ``provider`` with a default offer."""
        if stake:
            self.stake(provider, stake)
        o = make_offer(provider, **offer)
        with boa.env.prank(provider):
            self.registry.register_provider(o)
        return o

    def register_verifier(self, verifier: str, stake: int = MIN_VERIFIER_STAKE) -> None:
        if stake:
            self.stake(verifier, stake)
        with boa.env.prank(verifier):
            self.registry.register_verifier()

    # -- market

    def post(self, spec: Spec) -> int:
        with boa.env.prank(spec.requester):
            return self.market.post_job(spec)

    def commit(self, job_id: int, spec: Spec, provider: str, price: int, salt: bytes | None = None) -> bytes:
        salt = salt if salt is not None else salt_for(provider, price)
        commitment = self.market.bid_commitment(job_id, provider, price, salt)
        with boa.env.prank(provider):
            self.market.commit_bid(job_id, spec, commitment)
        return salt

    def reveal(self, job_id: int, spec: Spec, provider: str, price: int, salt: bytes | None = None) -> None:
        salt = salt if salt is not None else salt_for(provider, price)
        with boa.env.prank(provider):
            self.market.reveal_bid(job_id, spec, price, salt)

    def finalize(self, job_id: int, spec: Spec, caller: str | None = None) -> None:
        with boa.env.prank(caller or spec.requester):
            self.market.finalize_auction(job_id, spec)

    def sealed_auction(self, job_id: int, spec: Spec, asks: list[tuple[str, int]], finalize: bool = True) -> None:
        """Commits every ask, travels past the bid deadline, reveals them in order,
        travels past the reveal deadline and (by default) finalizes."""
        for provider, price in asks:
            self.commit(job_id, spec, provider, price)
        travel_to(spec.bid_deadline)
        for provider, price in asks:
            self.reveal(job_id, spec, provider, price)
        travel_to(spec.reveal_deadline)
        if finalize:
            self.finalize(job_id, spec)

    def take(self, job_id: int, spec: Spec, provider: str) -> int:
        with boa.env.prank(provider):
            return self.market.take_job(job_id, spec)

    def commit_result(self, job_id: int, spec: Spec, slot: int, gpu_seconds: int, root: bytes = ROOT_HASH) -> None:
        provider = self.market.slots(job_id, slot).provider
        with boa.env.prank(provider):
            self.market.commit_result(job_id, spec, slot, root, gpu_seconds)

    def settle(self, job_id: int, spec: Spec, slot: int, caller: str | None = None) -> None:
        with boa.env.prank(caller or spec.requester):
            self.market.settle(job_id, spec, slot)

    def leased_job(self, spec: Spec, provider: str, price: int) -> int:
        """Posts ``spec`` (redundancy 1, sealed) and leases it to ``provider`` as the only ask:
        the clearing price is then the job's max price."""
        job_id = self.post(spec)
        self.sealed_auction(job_id, spec, [(provider, price)])
        return job_id

    def committed_job(self, spec: Spec, provider: str, gpu_seconds: int) -> int:
        """An instant job taken by ``provider`` at its price floor, its result committed."""
        job_id = self.post(spec)
        self.take(job_id, spec, provider)
        boa.env.time_travel(seconds=gpu_seconds)
        self.commit_result(job_id, spec, 0, gpu_seconds)
        return job_id


# A token that answers `False` instead of reverting when told to fail: the only way to reach the
# contracts' own "transfer failed" checks, since snekmate's ERC-20 reverts on its own.
FALSE_TOKEN_SOURCE = """
# pragma version ~=0.4.3
balanceOf: public(HashMap[address, uint256])
failing: public(bool)

@external
def set_failing(failing_: bool):
    self.failing = failing_

@external
def mint(to: address, amount: uint256):
    self.balanceOf[to] += amount

@external
def transfer(to: address, amount: uint256) -> bool:
    if self.failing:
        return False
    self.balanceOf[msg.sender] -= amount
    self.balanceOf[to] += amount
    return True

@external
def transferFrom(owner: address, to: address, amount: uint256) -> bool:
    if self.failing:
        return False
    self.balanceOf[owner] -= amount
    self.balanceOf[to] += amount
    return True
"""


def deploy_with_false_token(owner: str, treasury: str) -> Deployment:
    """Registry and market over a token whose transfers can be made to return False."""
    with boa.env.prank(owner):
        token = loads(FALSE_TOKEN_SOURCE)
    return deploy_over(token, owner, treasury)
