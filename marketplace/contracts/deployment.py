"""Typed bindings for flopex's contracts, and deployment of all of them in one call.

``deploy_all(chain, deployer)`` deploys the token, the registry, the market, the reservations
contract (reserved capacity, :mod:`marketplace.contracts.reservations`) and the verifier court
(:mod:`marketplace.contracts.court`, whose rulings alone the market and the reservations take),
links them and returns a
:class:`Deployment`, which can be saved to and loaded from a JSON file so other processes find the
contracts. :class:`Token`, :class:`Registry` and :class:`Market` wrap every
function the rest of flopex uses; transactions take the sending account first.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from marketplace.chain.client import Chain
from marketplace.contracts.base import artifact
from marketplace.contracts.court import Court, CourtParameters, deploy_court, load_court
from marketplace.contracts.market import Market
from marketplace.contracts.registry import Registry
from marketplace.contracts.reservations import (
    ReservationParameters,
    Reservations,
    deploy_reservations,
    load_reservations,
)
from marketplace.contracts.token import Token
from marketplace.errors import ConfigError
from marketplace.types import (
    ONE_TOKEN,
)

__all__ = ["Contracts", "Deployment", "MarketParameters", "deploy_all", "load_contracts"]

DEPLOYMENT_FORMAT = 1


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
    court: str | None = None  # the verifier court; None in deployments made before it existed

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


@dataclass
class Contracts:
    """All of flopex's contracts on one chain."""

    chain: Chain
    deployment: Deployment
    token: Token
    registry: Registry
    market: Market
    reservations: Reservations | None = None
    court: Court | None = None

    def require_court(self) -> Court:
        """The verifier court; a clear error when this deployment has none."""
        if self.court is None:
            raise ConfigError(
                "this deployment has no verifier court; redeploy with `flopex deploy` or `flopex chain up`"
            )
        return self.court

    def require_reservations(self) -> Reservations:
        """The reservations contract; a clear error when this deployment has none."""
        if self.reservations is None:
            raise ConfigError(
                "this deployment has no reservations contract; redeploy with `flopex deploy` or `flopex chain up`"
            )
        return self.reservations


def load_contracts(chain: Chain, deployment: Deployment) -> Contracts:
    """Bind to a deployment; checks the chain id and that code exists at each address."""
    if deployment.chain_id != chain.chain_id:
        raise ConfigError(f"deployment is for chain {deployment.chain_id}, but the node is chain {chain.chain_id}")
    for name in ("token", "registry", "market"):
        address = getattr(deployment, name)
        with chain.locked():
            code = chain.w3.eth.get_code(to_checksum_address(address))
        if not code:
            raise ConfigError(f"no {name} contract at {address} on this chain; is the deployment file stale?")
    reservations = None
    if deployment.reservations:
        reservations = load_reservations(chain, deployment.reservations, deployment.start_block)
    court = None
    if deployment.court:
        court = load_court(chain, deployment.court, deployment.start_block)
    return Contracts(
        chain=chain,
        deployment=deployment,
        token=Token(chain, deployment.token),
        registry=Registry(chain, deployment.registry),
        market=Market(chain, deployment.market, deployment.start_block),
        reservations=reservations,
        court=court,
    )


def deploy_all(
    chain: Chain,
    deployer: LocalAccount,
    *,
    treasury: str | None = None,
    parameters: MarketParameters | None = None,
    reservations: bool = True,
    reservation_parameters: ReservationParameters | None = None,
    court_parameters: CourtParameters | None = None,
) -> Contracts:
    """Deploy the token, registry, market, reservations (optional) and court, link them, and return
    the bound contracts."""
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
    if reservations:
        bound = deploy_reservations(
            chain,
            deployer,
            contracts.token,
            contracts.registry,
            treasury=deployment.treasury,
            parameters=reservation_parameters,
        )
        bound.start_block = start_block
        contracts.reservations = bound
        contracts.deployment = replace(contracts.deployment, reservations=bound.address)
    court = deploy_court(
        chain,
        deployer,
        token=token,
        registry=contracts.registry,
        market=market,
        reservations=contracts.reservations.address if contracts.reservations else None,
        treasury=treasury,
        parameters=court_parameters,
    )
    court.start_block = start_block
    contracts.market.set_court(deployer, court.address)
    if contracts.reservations is not None:
        contracts.reservations.set_court(deployer, court.address)
    contracts.court = court
    contracts.deployment = replace(contracts.deployment, court=court.address)
    # The market last: until it is set the registry's owner authorizes contracts at once, after it
    # every authorization and parameter change waits out the registry's change delay.
    contracts.registry.set_market(deployer, market)
    return contracts
