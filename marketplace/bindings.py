"""Typed bindings for flopex's contracts, and deployment of all of them in one call.

``deploy_all(chain, deployer)`` deploys the token, the registry, the market and the reservations
contract (reserved capacity, :mod:`marketplace.reservations`), links them and returns a
:class:`Deployment`, which can be saved to and loaded from a JSON file so other processes find the
contracts. :class:`Token`, :class:`Registry` and :class:`Market` wrap every
function the rest of flopex uses; transactions take the sending account first.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from marketplace import events as ev
from marketplace.chain import Chain
from marketplace.errors import ChainError, ConfigError
from marketplace.types import (
    ONE_TOKEN,
    JobSpec,
    JobStatus,
    Offer,
    Outcome,
    SlotStatus,
    TokenAmount,
)

if TYPE_CHECKING:
    from marketplace.reservations import ReservationParameters, Reservations

__all__ = [
    "Contracts",
    "Deployment",
    "JobState",
    "Market",
    "MarketParameters",
    "Registry",
    "SlotState",
    "Token",
    "artifact",
    "deploy_all",
    "load_contracts",
]

DEPLOYMENT_FORMAT = 1


@cache
def artifact(name: str) -> dict[str, Any]:
    """The compiled artifact (ABI, bytecode) of contract ``name``, as built by ``marketplace.build``."""
    try:
        text = resources.files("marketplace.artifacts").joinpath(f"{name}.json").read_text()
    except FileNotFoundError as exc:
        raise ConfigError(f"no artifact for {name}; run `python -m marketplace.build`") from exc
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True)
class MarketParameters:
    """Economic settings fixed at deployment (the owner may change them later)."""

    min_provider_stake: int = 100 * ONE_TOKEN
    min_verifier_stake: int = 100 * ONE_TOKEN
    unbonding_period: int = 7 * 24 * 3600
    fee_bps: int = 100
    dispute_bond: int = 10 * ONE_TOKEN
    base_slash: int = 50 * ONE_TOKEN
    slash_requester_bps: int = 5_000


@dataclass(frozen=True)
class Deployment:
    """Where flopex's contracts live on one chain."""

    chain_id: int
    token: str
    registry: str
    market: str
    treasury: str
    deployer: str
    start_block: int
    parameters: MarketParameters = field(default_factory=MarketParameters)
    rpc_url: str | None = None
    format: int = DEPLOYMENT_FORMAT
    reservations: str | None = None  # the reservations contract; None in deployments without one

    def save(self, path: str | Path) -> Path:
        """Write the deployment as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Deployment:
        """Read a deployment file written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"no deployment file at {path}; run `flopex chain up` or `flopex deploy`") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"deployment file {path} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != DEPLOYMENT_FORMAT:
            raise ConfigError(f"deployment file {path} has an unknown format")
        try:
            params = MarketParameters(**data.pop("parameters"))
            return cls(parameters=params, **data)
        except TypeError as exc:
            raise ConfigError(f"deployment file {path} is missing fields: {exc}") from exc


class _Bound:
    """A contract bound to a chain."""

    NAME = ""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = to_checksum_address(address)
        self.contract = chain.w3.eth.contract(address=self.address, abi=artifact(self.NAME)["abi"])

    def _call(self, name: str, *args: Any) -> Any:
        return self.chain.call(getattr(self.contract.functions, name)(*args), function=name)

    def _tx(self, account: LocalAccount, name: str, *args: Any) -> Any:
        return self.chain.transact(account, getattr(self.contract.functions, name)(*args), function=name)

    def events_in(self, receipt: Any) -> list[ev.ChainEvent]:
        """Decode this contract's events in a transaction receipt."""
        found: list[ev.ChainEvent] = []
        for log in receipt["logs"]:
            if to_checksum_address(log["address"]) != self.address:
                continue
            for event in self.contract.events:
                try:
                    decoded = event().process_log(log)
                except Exception:
                    continue
                item = ev.decode(decoded)
                if item is not None:
                    found.append(item)
                break
        return found

    def get_events(self, name: str, from_block: int = 0, **filters: Any) -> list[Any]:
        """Decoded events ``name`` since ``from_block``, filtered on indexed arguments."""
        with self.chain.locked():
            logs = getattr(self.contract.events, name)().get_logs(
                from_block=from_block, argument_filters=filters or None
            )
        return [e for e in (ev.decode(log) for log in logs) if e is not None]


class Token(_Bound):
    """The compute token (ERC-20 with permit)."""

    NAME = "ComputeToken"

    def balance_of(self, account: str) -> TokenAmount:
        """Tokens held by ``account``."""
        return TokenAmount(self._call("balanceOf", account))

    def allowance(self, owner: str, spender: str) -> int:
        """What ``spender`` may still take from ``owner``."""
        return int(self._call("allowance", owner, spender))

    def approve(self, account: LocalAccount, spender: str, amount: int) -> Any:
        """Let ``spender`` take ``amount`` of ``account``'s tokens."""
        return self._tx(account, "approve", spender, amount)

    def transfer(self, account: LocalAccount, to: str, amount: int) -> Any:
        """Send ``amount`` tokens to ``to``."""
        return self._tx(account, "transfer", to, amount)

    def mint(self, minter: LocalAccount, to: str, amount: int) -> Any:
        """Create ``amount`` tokens for ``to`` (minters only: the faucet on dev chains)."""
        return self._tx(minter, "mint", to, amount)

    def nonces(self, owner: str) -> int:
        """The owner's EIP-2612 permit nonce."""
        return int(self._call("nonces", owner))

    def total_supply(self) -> int:
        """All tokens in existence."""
        return int(self._call("totalSupply"))

    def sign_permit(self, owner: LocalAccount, spender: str, amount: int, deadline: int) -> tuple[int, bytes, bytes]:
        """Sign an EIP-2612 permit; returns ``(v, r, s)``."""
        domain = {
            "name": "flopex",
            "version": "1",
            "chainId": self.chain.chain_id,
            "verifyingContract": self.address,
        }
        types = {
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        }
        message = {
            "owner": owner.address,
            "spender": spender,
            "value": amount,
            "nonce": self.nonces(owner.address),
            "deadline": deadline,
        }
        signed = owner.sign_typed_data(domain, types, message)
        return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@dataclass(frozen=True)
class StakeState:
    """An account's stake in the registry."""

    active: int
    unbonding: int
    unbond_at: int
    active_jobs: int


class Registry(_Bound):
    """The provider registry: stakes, offers, verifiers, reputation."""

    NAME = "ProviderRegistry"

    def stake(self, account: LocalAccount, amount: int) -> Any:
        """Stake ``amount`` (approve the registry first)."""
        return self._tx(account, "stake", amount)

    def request_unbond(self, account: LocalAccount, amount: int) -> Any:
        """Start unbonding ``amount`` of active stake."""
        return self._tx(account, "request_unbond", amount)

    def withdraw_unbonded(self, account: LocalAccount) -> Any:
        """Withdraw unbonded stake after the delay."""
        return self._tx(account, "withdraw_unbonded")

    def register_provider(self, account: LocalAccount, offer: Offer) -> Any:
        """Register ``account`` as a provider with ``offer`` (or replace its offer)."""
        return self._tx(account, "register_provider", offer.as_tuple())

    def set_price_floor(self, account: LocalAccount, price_floor: int) -> Any:
        """Change ``account``'s posted price per GPU-hour (what an instant take pays), nothing else."""
        return self._tx(account, "set_price_floor", price_floor)

    def deregister_provider(self, account: LocalAccount) -> Any:
        """Withdraw ``account``'s offer."""
        return self._tx(account, "deregister_provider")

    def register_verifier(self, account: LocalAccount) -> Any:
        """Register ``account`` as a verifier."""
        return self._tx(account, "register_verifier")

    def attest_throughput(self, verifier: LocalAccount, provider: str, gflops: int) -> Any:
        """Record a measured throughput for ``provider``."""
        return self._tx(verifier, "attest_throughput", provider, gflops)

    def stakes(self, account: str) -> StakeState:
        """``account``'s stake."""
        return StakeState(*self._call("stakes", account))

    def offer(self, provider: str) -> Offer:
        """``provider``'s current offer."""
        return Offer.from_abi(self._call("offers", provider))

    def price_floor(self, provider: str) -> int:
        """``provider``'s posted price per GPU-hour: what an instant take pays."""
        return int(self._call("price_floor", provider))

    def is_provider(self, account: str) -> bool:
        """Whether ``account`` has a registered offer."""
        return bool(self._call("is_provider", account))

    def is_active_verifier(self, account: str) -> bool:
        """Whether ``account`` may attest."""
        return bool(self._call("is_active_verifier", account))

    def is_eligible(self, provider: str, spec: JobSpec) -> bool:
        """Whether ``provider`` may bid for a job with ``spec``."""
        return bool(
            self._call("is_eligible", provider, int(spec.device_kind), spec.gpus, spec.min_memory_mb)
        )

    def reputation(self, provider: str) -> tuple[int, int, int]:
        """``(completed, failed, slashed)`` counters."""
        completed, failed, slashed = self._call("reputation", provider)
        return int(completed), int(failed), int(slashed)

    def attestation(self, provider: str) -> tuple[int, str, int, bool]:
        """``(gflops, verifier, attested_at, flagged)`` of the latest capacity attestation."""
        gflops, verifier, at, flagged = self._call("attestations", provider)
        return int(gflops), str(verifier), int(at), bool(flagged)

    def total_stake(self, account: str) -> int:
        """Active plus unbonding stake."""
        return int(self._call("total_stake", account))

    def min_provider_stake(self) -> int:
        """Least stake to register."""
        return int(self._call("min_provider_stake"))


@dataclass(frozen=True)
class JobState:
    """A job's mutable state on chain."""

    job_id: int
    status: JobStatus
    escrow: int
    count: int
    lease_start: int


@dataclass(frozen=True)
class SlotState:
    """One provider's slot of a job."""

    job_id: int
    slot: int
    provider: str
    status: SlotStatus
    price: int
    result_root: bytes
    gpu_seconds: int
    committed_at: int
    disputer: str


class Market(_Bound):
    """The job market and escrow. Job terms are looked up from ``JobPosted`` and cached."""

    NAME = "JobMarket"

    def __init__(self, chain: Chain, address: str, start_block: int = 0) -> None:
        super().__init__(chain, address)
        self.start_block = start_block
        self._specs: dict[int, JobSpec] = {}

    # --------------------------------------------------------------- jobs

    def spec(self, job_id: int) -> JobSpec:
        """The terms of job ``job_id`` (from its ``JobPosted`` event)."""
        if job_id not in self._specs:
            posted = self.get_events("JobPosted", self.start_block, job_id=job_id)
            if not posted:
                raise ChainError(f"no job {job_id} on this market")
            self._specs[job_id] = posted[0].spec
        return self._specs[job_id]

    def post_job(self, account: LocalAccount, spec: JobSpec) -> int:
        """Post a job (approve ``spec.escrow`` first); returns its id."""
        receipt = self._tx(account, "post_job", spec.as_tuple())
        return self._posted_id(receipt, spec)

    def post_job_with_permit(self, account: LocalAccount, spec: JobSpec, token: Token, deadline: int) -> int:
        """Post a job, approving its escrow with an EIP-2612 permit in the same transaction."""
        v, r, s = token.sign_permit(account, self.address, spec.escrow, deadline)
        receipt = self._tx(account, "post_job_with_permit", spec.as_tuple(), deadline, v, r, s)
        return self._posted_id(receipt, spec)

    def _posted_id(self, receipt: Any, spec: JobSpec) -> int:
        for item in self.events_in(receipt):
            if isinstance(item, ev.JobPosted):
                self._specs[item.job_id] = spec
                return item.job_id
        raise ChainError("post_job emitted no JobPosted event")

    def cancel_job(self, account: LocalAccount, job_id: int) -> Any:
        """Withdraw an open job before its bid deadline."""
        return self._tx(account, "cancel_job", job_id, self.spec(job_id).as_tuple())

    def commit_bid(self, account: LocalAccount, job_id: int, price: int, salt: bytes | None = None) -> bytes:
        """Commit a sealed ask; returns the salt needed to reveal it."""
        salt = salt or secrets.token_bytes(32)
        commitment = self.bid_commitment(job_id, account.address, price, salt)
        self._tx(account, "commit_bid", job_id, self.spec(job_id).as_tuple(), commitment)
        return salt

    def reveal_bid(self, account: LocalAccount, job_id: int, price: int, salt: bytes) -> Any:
        """Reveal a committed ask."""
        return self._tx(account, "reveal_bid", job_id, self.spec(job_id).as_tuple(), price, salt)

    def finalize_auction(self, account: LocalAccount, job_id: int) -> Any:
        """End bidding: lease the winners, or expire the job and refund it."""
        return self._tx(account, "finalize_auction", job_id, self.spec(job_id).as_tuple())

    def take_job(self, account: LocalAccount, job_id: int) -> Any:
        """Take a slot of an instant job at the caller's price floor."""
        return self._tx(account, "take_job", job_id, self.spec(job_id).as_tuple())

    def commit_result(
        self, account: LocalAccount, job_id: int, slot: int, result_root: bytes, gpu_seconds: int
    ) -> Any:
        """Commit a result root and the GPU-seconds claimed for a slot."""
        return self._tx(
            account, "commit_result", job_id, self.spec(job_id).as_tuple(), slot, result_root, gpu_seconds
        )

    def accept_result(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """The requester accepts a committed result."""
        return self._tx(account, "accept_result", job_id, self.spec(job_id).as_tuple(), slot)

    def dispute_result(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """Dispute a committed result (approve the dispute bond first)."""
        return self._tx(account, "dispute_result", job_id, self.spec(job_id).as_tuple(), slot)

    def attest(
        self, account: LocalAccount, job_id: int, slot: int, outcome: Outcome, verified_gpu_seconds: int = 0
    ) -> Any:
        """A verifier rules on a committed or disputed result."""
        return self._tx(
            account, "attest", job_id, self.spec(job_id).as_tuple(), slot, int(outcome), verified_gpu_seconds
        )

    def settle(self, account: LocalAccount, job_id: int, slot: int) -> Any:
        """Settle a slot that can end."""
        return self._tx(account, "settle", job_id, self.spec(job_id).as_tuple(), slot)

    def withdraw(self, account: LocalAccount) -> int:
        """Withdraw all of ``account``'s credit; returns the amount."""
        before = self.credits(account.address)
        self._tx(account, "withdraw")
        return before

    # --------------------------------------------------------------- views

    def job(self, job_id: int) -> JobState:
        """Job ``job_id``'s state."""
        _hash, status, escrow, count, lease_start = self._call("jobs", job_id)
        return JobState(job_id, JobStatus(status), int(escrow), int(count), int(lease_start))

    def slot(self, job_id: int, slot: int) -> SlotState:
        """Slot ``slot`` of job ``job_id``."""
        provider, status, price, root, seconds, committed_at, disputer = self._call("slots", job_id, slot)
        return SlotState(
            job_id, slot, provider, SlotStatus(status), int(price), bytes(root), int(seconds),
            int(committed_at), disputer,
        )

    def slots_of(self, job_id: int) -> list[SlotState]:
        """Every slot of job ``job_id`` that has a provider."""
        spec = self.spec(job_id)
        found = [self.slot(job_id, i) for i in range(spec.redundancy)]
        return [s for s in found if s.status != SlotStatus.NONE]

    def credits(self, account: str) -> int:
        """Tokens ``account`` can withdraw."""
        return int(self._call("credits", account))

    def total_credits(self) -> int:
        """All credits outstanding."""
        return int(self._call("total_credits"))

    def job_count(self) -> int:
        """Jobs posted so far."""
        return int(self._call("job_count"))

    def bid_commitment(self, job_id: int, provider: str, price: int, salt: bytes) -> bytes:
        """The commitment of a sealed ask (computed locally, as the contract does)."""
        from eth_abi import encode

        return keccak(encode(["uint256", "address", "uint256", "bytes32"], [job_id, provider, price, salt]))

    def fee_bps(self) -> int:
        """Protocol fee in basis points."""
        return int(self._call("fee_bps"))

    def treasury(self) -> str:
        """Where fees go."""
        return str(self._call("treasury"))


@dataclass
class Contracts:
    """All of flopex's contracts on one chain."""

    chain: Chain
    deployment: Deployment
    token: Token
    registry: Registry
    market: Market
    reservations: Reservations | None = None

    def require_reservations(self) -> Reservations:
        """The reservations contract; a clear error when this deployment has none."""
        if self.reservations is None:
            raise ConfigError("this deployment has no reservations contract; redeploy with `flopex deploy` "
                              "or `flopex chain up`")
        return self.reservations


def load_contracts(chain: Chain, deployment: Deployment) -> Contracts:
    """Bind to a deployment; checks the chain id and that code exists at each address."""
    if deployment.chain_id != chain.chain_id:
        raise ConfigError(
            f"deployment is for chain {deployment.chain_id}, but the node is chain {chain.chain_id}"
        )
    for name in ("token", "registry", "market"):
        address = getattr(deployment, name)
        with chain.locked():
            code = chain.w3.eth.get_code(to_checksum_address(address))
        if not code:
            raise ConfigError(f"no {name} contract at {address} on this chain; is the deployment file stale?")
    reservations = None
    if deployment.reservations:
        from marketplace.reservations import load_reservations

        reservations = load_reservations(chain, deployment.reservations, deployment.start_block)
    return Contracts(
        chain=chain,
        deployment=deployment,
        token=Token(chain, deployment.token),
        registry=Registry(chain, deployment.registry),
        market=Market(chain, deployment.market, deployment.start_block),
        reservations=reservations,
    )


def deploy_all(
    chain: Chain,
    deployer: LocalAccount,
    *,
    treasury: str | None = None,
    parameters: MarketParameters | None = None,
    reservations: bool = True,
    reservation_parameters: ReservationParameters | None = None,
) -> Contracts:
    """Deploy the token, registry and market (and reservations), link them, and return the bound contracts."""
    params = parameters or MarketParameters()
    treasury = to_checksum_address(treasury or deployer.address)
    start_block = chain.block_number()

    def deploy(name: str, *args: Any) -> str:
        art = artifact(name)
        return str(chain.deploy(deployer, art["abi"], art["bytecode"], *args)["contractAddress"])

    token = deploy("ComputeToken", "flopex Compute", "FLOP", "flopex", "1")
    registry = deploy(
        "ProviderRegistry", token, params.min_provider_stake, params.min_verifier_stake, params.unbonding_period
    )
    market = deploy(
        "JobMarket",
        token,
        registry,
        treasury,
        params.fee_bps,
        params.dispute_bond,
        params.base_slash,
        params.slash_requester_bps,
    )
    deployment = Deployment(
        chain_id=chain.chain_id,
        token=token,
        registry=registry,
        market=market,
        treasury=treasury,
        deployer=deployer.address,
        start_block=start_block,
        parameters=params,
    )
    contracts = load_contracts(chain, deployment)
    contracts.registry._tx(deployer, "set_market", market)
    if reservations:
        from marketplace.reservations import deploy_reservations

        bound = deploy_reservations(contracts, deployer, parameters=reservation_parameters)
        bound.start_block = start_block
        contracts.reservations = bound
        contracts.deployment = replace(deployment, reservations=bound.address)
    return contracts
