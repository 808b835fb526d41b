"""``flopex pool``: create, join, leave and show provider pools, and run their daemons.

``create`` deploys a pool (its deployer is its operator); ``join`` and ``leave`` are a member's,
``withdraw`` pulls a member's pay or the operator's fees;
``register`` publishes the pool's offer; ``show`` prints members, stakes, credits and assignments.
``operator start`` runs :class:`~worker.pool.operator.PoolOperatorDaemon` (bids for the pool and
assigns slots); ``member start`` runs a member's worker together with its
:class:`~worker.pool.operator.MemberDaemon` (joins, runs assigned slots, commits through the pool).
Errors are flopex's: one line and a non-zero exit (see :mod:`flopex.cli.main`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from flopex.cli.common import (
    DEFAULT_HOME,
    account_options,
    chain_options,
    emit_json,
    fail,
    hold_data_dir,
    load_signer,
    open_contracts,
    serve_options,
    worker_options,
)

__all__ = ["pool"]


pool: click.Group = click.Group("pool", help="Provider pools: small providers bidding as one.")


_DEVICE_KINDS = click.Choice(["cpu", "cuda"])


def _pool(contracts: Any, address: str) -> Any:
    from marketplace.contracts.pool import load_pool

    return load_pool(contracts, address)


def _tokens(text: str) -> int:
    from marketplace.types import parse_tokens

    return int(parse_tokens(text))


def _register(contracts: Any, signer: Any, pool_: Any, price_text: str, device_kind: str, device_model: str) -> str:
    """Register the pool's offer, covered by its best-equipped bonded member; returns that member."""
    from marketplace.errors import ConfigError
    from marketplace.market.pricing import FixedFloor
    from marketplace.types import DeviceKind
    from worker.pool.operator import OperatorSettings, register_pool

    if pool_.operator() != signer.address:
        raise ConfigError(f"{signer.address} is not the operator of pool {pool_.address}")
    settings = OperatorSettings(
        price_floor=_tokens(price_text),
        strategy=FixedFloor(),
        device_model=device_model,
        device_kind=DeviceKind[device_kind.upper()],
    )
    cover = register_pool(contracts, pool_, signer, settings)
    if cover is None:
        raise ConfigError(f"pool {pool_.address} has no bonded member to cover its offer yet")
    return str(cover.address)


# ---------------------------------------------------------------------- create, register


@pool.command("create")
@chain_options
@account_options
@click.option(
    "--fee-bps",
    type=click.IntRange(0, 2000),
    default=1000,
    show_default=True,
    help="The operator's share of each payment, in basis points.",
)
@click.option(
    "--min-stake", "min_stake_text", default="100", show_default=True, help="Least stake a member bonds, in tokens."
)
@click.option(
    "--unbonding",
    type=click.IntRange(0),
    default=7 * 24 * 3600,
    show_default=True,
    help="Seconds a leaving member waits for its stake.",
)
@click.option(
    "--register", "register_", is_flag=True, help="Wait for the first member to join, then register the pool's offer."
)
@click.option("--price", "price_text", default="1", show_default=True, help="With --register: tokens per GPU-hour.")
@click.option("--device-kind", type=_DEVICE_KINDS, default="cpu", show_default=True)
@click.option("--device-model", default="flopex pool", show_default=True)
@click.option(
    "--timeout",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="With --register: seconds to wait for a member.",
)
@click.option("--json", "as_json", is_flag=True)
def pool_create(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    fee_bps: int,
    min_stake_text: str,
    unbonding: int,
    register_: bool,
    price_text: str,
    device_kind: str,
    device_model: str,
    timeout: int,
    as_json: bool,
) -> None:
    """Deploy a pool run by the signing account; prints its address."""
    import time

    from marketplace.contracts.pool import deploy_pool
    from marketplace.errors import ConfigError

    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    min_stake = _tokens(min_stake_text)
    if min_stake == 0:
        raise ConfigError("--min-stake must be above zero")
    created = deploy_pool(contracts.chain, signer, contracts, fee_bps, min_stake, unbonding)
    if not as_json:
        click.echo(f"pool {created.address} created; operator {signer.address}, fee {fee_bps} bps")
        sys.stdout.flush()
    covering = None
    if register_:
        deadline = time.monotonic() + timeout
        while created.member_count() == 0:
            if time.monotonic() > deadline:
                raise ConfigError(f"no member joined pool {created.address} within {timeout} s; not registered")
            time.sleep(0.5)
        covering = _register(contracts, signer, created, price_text, device_kind, device_model)
        if not as_json:
            click.echo(f"pool {created.address} registered, covered by member {covering}")
    if as_json:
        emit_json(
            {
                "pool": created.address,
                "operator": signer.address,
                "fee_bps": fee_bps,
                "min_member_stake": min_stake,
                "unbonding_period": unbonding,
                "covering_member": covering,
            }
        )


@pool.command("register")
@click.argument("pool_address")
@chain_options
@account_options
@click.option("--price", "price_text", default="1", show_default=True, help="Price floor, tokens per GPU-hour.")
@click.option("--device-kind", type=_DEVICE_KINDS, default="cpu", show_default=True)
@click.option("--device-model", default="flopex pool", show_default=True)
def pool_register(
    pool_address: str,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    price_text: str,
    device_kind: str,
    device_model: str,
) -> None:
    """Register (or refresh) the pool's offer in the registry (the operator)."""
    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    covering = _register(contracts, signer, _pool(contracts, pool_address), price_text, device_kind, device_model)
    click.echo(f"pool {pool_address} registered, covered by member {covering}")


# ---------------------------------------------------------------------- members


def _check_stake(pool_: Any, contracts: Any, address: str, stake: int) -> None:
    from marketplace.errors import ConfigError
    from marketplace.types import format_tokens

    minimum = pool_.min_member_stake()
    if stake < minimum:
        raise ConfigError(
            f"stake {format_tokens(stake)} FLOP is below the pool's minimum of {format_tokens(minimum)} FLOP"
        )
    balance = contracts.token.balance_of(address)
    if balance < stake:
        raise ConfigError(f"{address} holds {format_tokens(balance)} FLOP; the stake needs {format_tokens(stake)}")


@pool.command("join")
@click.argument("pool_address")
@chain_options
@account_options
@click.option("--stake", "stake_text", required=True, help="Tokens to bond.")
@click.option("--gpus", type=click.IntRange(1, 65535), required=True, help="Devices on the member's worker.")
@click.option("--memory-mb", type=click.IntRange(1), required=True, help="Memory per device.")
@click.option("--endpoint", required=True, help="gRPC endpoint of the member's worker, host:port.")
@click.option(
    "--signer",
    "signer_address",
    default=None,
    help="The worker's receipt signer [default: read from --data-dir's receipt key].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"The worker's data directory (its receipt key) [default: {DEFAULT_HOME}/member-ADDRESS].",
)
def pool_join(
    pool_address: str,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    stake_text: str,
    gpus: int,
    memory_mb: int,
    endpoint: str,
    signer_address: str | None,
    data_dir: Path | None,
) -> None:
    """Join a pool with a stake and a worker that runs elsewhere (`member start` does both)."""
    from marketplace.errors import ConfigError

    contracts = open_contracts(rpc_url, deployment_path)
    pool_ = _pool(contracts, pool_address)
    signer = load_signer(account_address, dev_index, password_file)
    if pool_.member(signer.address).joined:
        raise ConfigError(f"{signer.address} is already a member of pool {pool_.address}")
    stake = _tokens(stake_text)
    _check_stake(pool_, contracts, signer.address, stake)
    if signer_address is None:
        from worker.node.config import load_or_create_key

        folder = data_dir or DEFAULT_HOME / f"member-{signer.address}"
        signer_address = load_or_create_key(folder / "receipt.key").address
    contracts.token.approve(signer, pool_.address, stake)
    pool_.join(signer, stake, gpus, memory_mb, signer_address, endpoint)
    click.echo(
        f"{signer.address} joined pool {pool_.address}: {stake_text} FLOP staked, {gpus} device(s), "
        f"worker {endpoint} signing as {signer_address}"
    )


@pool.command("leave")
@click.argument("pool_address")
@chain_options
@account_options
@click.option("--amount", "amount_text", default=None, help="Tokens to unbond [default: all the stake].")
@click.option("--wait", is_flag=True, help="Wait until the stake can be withdrawn, then withdraw it.")
def pool_leave(
    pool_address: str,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    amount_text: str | None,
    wait: bool,
) -> None:
    """Unbond stake; run again (or give --wait) to withdraw it once the unbonding period has passed."""
    import time

    from marketplace.errors import ConfigError, ContractRevert
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    pool_ = _pool(contracts, pool_address)
    signer = load_signer(account_address, dev_index, password_file)
    member = pool_.member(signer.address)
    if not member.joined:
        raise ConfigError(f"{signer.address} is not a member of pool {pool_.address}")
    if member.unbonding == 0 or (amount_text is not None and member.stake > 0):
        amount = _tokens(amount_text) if amount_text is not None else member.stake
        pool_.request_leave(signer, amount)
        member = pool_.member(signer.address)
        click.echo(f"{format_tokens(amount)} FLOP unbonding; withdrawable from {member.unbond_at} (unix time)")
        if not wait:
            return
    while True:
        now = contracts.chain.next_timestamp()
        if now >= member.unbond_at:
            try:
                amount = pool_.member(signer.address).unbonding
                pool_.withdraw_stake(signer)
                click.echo(f"withdrew {format_tokens(amount)} FLOP of stake from pool {pool_.address}")
                return
            except ContractRevert as exc:
                if not wait:
                    raise
                click.echo(f"waiting: {exc.reason}")
        elif not wait:
            click.echo(
                f"still unbonding: {format_tokens(member.unbonding)} FLOP withdrawable from "
                f"{member.unbond_at} ({member.unbond_at - now} s from now)"
            )
            return
        time.sleep(2.0)


@pool.command("withdraw")
@click.argument("pool_address")
@chain_options
@account_options
def pool_withdraw(
    pool_address: str,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
) -> None:
    """Withdraw the signer's pool credit (a member's pay or the operator's fees)."""
    from marketplace.errors import ConfigError
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    pool_ = _pool(contracts, pool_address)
    signer = load_signer(account_address, dev_index, password_file)
    if pool_.credits(signer.address) == 0:
        raise ConfigError(f"{signer.address} has no credit in pool {pool_.address}")
    amount = pool_.withdraw(signer)
    click.echo(f"withdrew {format_tokens(amount)} FLOP from pool {pool_.address}")


# ---------------------------------------------------------------------- show


def pool_summary(contracts: Any, pool_: Any) -> dict[str, Any]:
    """Everything ``pool show`` prints, as JSON data."""
    operator = pool_.operator()
    registry = contracts.registry
    members = []
    for m in pool_.members():
        members.append(
            {
                "address": m.address,
                "stake": m.stake,
                "unbonding": m.unbonding,
                "unbond_at": m.unbond_at,
                "open_assignments": m.assignments,
                "gpu_seconds": m.gpu_seconds,
                "gpus": m.gpus,
                "memory_mb": m.memory_mb,
                "signer": m.signer,
                "endpoint": m.endpoint,
                "credit": pool_.credits(m.address),
            }
        )
    assignments: dict[tuple[int, int], dict[str, Any]] = {}
    for event in pool_.pool_events("SlotAssigned", contracts.deployment.start_block):
        job_id, slot = int(event.args["job_id"]), int(event.args["slot"])
        assignments[(job_id, slot)] = {"job_id": job_id, "slot": slot, "member": event.args["member"]}
    for key, entry in assignments.items():
        entry["status"] = contracts.market.slot(*key).status.name.lower()
        entry["booked"] = pool_.booked(*key)
    income, loss = pool_.unattributed()
    return {
        "pool": pool_.address,
        "operator": operator,
        "operator_credit": pool_.credits(operator),
        "fee_bps": pool_.fee_bps(),
        "min_member_stake": pool_.min_member_stake(),
        "unbonding_period": pool_.unbonding_period(),
        "registered": registry.is_provider(pool_.address),
        "registry_stake": registry.total_stake(pool_.address),
        "market_credit": contracts.market.credits(pool_.address),
        "total_stake": pool_.total_stake(),
        "total_unbonding": pool_.total_unbonding(),
        "total_credits": pool_.total_credits(),
        "total_gpus": pool_.total_gpus(),
        "open_assignments": pool_.open_assignments(),
        "draining": pool_.draining(),
        "unattributed": {"income": income, "loss": loss},
        "members": members,
        "assignments": [assignments[k] for k in sorted(assignments)],
    }


@pool.command("show")
@click.argument("pool_address")
@chain_options
@click.option("--json", "as_json", is_flag=True)
def pool_show(pool_address: str, rpc_url: str | None, deployment_path: Path, as_json: bool) -> None:
    """A pool's members, stakes, credits and assignments."""
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    summary = pool_summary(contracts, _pool(contracts, pool_address))
    if as_json:
        emit_json(summary)
        return
    f = format_tokens
    click.echo(
        f"pool {summary['pool']}: operator {summary['operator']} (fee {summary['fee_bps']} bps, credit "
        f"{f(summary['operator_credit'])} FLOP); {'registered' if summary['registered'] else 'not registered'}"
        f", stake {f(summary['total_stake'])} FLOP, {summary['total_gpus']} device(s)"
    )
    for m in summary["members"]:
        click.echo(
            f"  member {m['address']}: stake {f(m['stake'])}, unbonding {f(m['unbonding'])}, credit "
            f"{f(m['credit'])} FLOP; {m['gpus']} device(s) x {m['memory_mb']} MB at {m['endpoint']}; "
            f"{m['gpu_seconds']} GPU-s delivered, {m['open_assignments']} open"
        )
    for a in summary["assignments"]:
        click.echo(
            f"  job {a['job_id']} slot {a['slot']}: {a['member']} {a['status']}{' (booked)' if a['booked'] else ''}"
        )


# ---------------------------------------------------------------------- daemons


def _serve_until_stopped(daemon: Any, server: Any, name: str) -> None:
    """Run ``daemon`` (and ``server``) until SIGTERM or Ctrl-C; exits non-zero if the daemon failed."""
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    daemon.start()
    try:
        while not stop.wait(0.5) and not daemon.stopped:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        daemon.stop()
        if server is not None:
            server.stop()
        click.echo(f"{name} stopped")
    if daemon.fatal:
        fail(daemon.fatal)


@pool.group("operator")
def operator_group() -> None:
    """The pool operator's daemon."""


@operator_group.command("start")
@click.argument("pool_address")
@chain_options
@account_options
@click.option("--price", "price_text", default="1", show_default=True, help="Price floor, tokens per GPU-hour.")
@click.option(
    "--strategy",
    default="fixed",
    show_default=True,
    help="Pricing strategy: fixed | ramp:slope=S | decay:start=A,min=B,half_life=T | follow:undercut=U.",
)
@click.option("--device-kind", type=_DEVICE_KINDS, default="cpu", show_default=True)
@click.option("--device-model", default="flopex pool", show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_HOME / "pool-operator",
    show_default=True,
    help="Where the daemon keeps its bids and slots.",
)
@click.option("--withdraw/--no-withdraw", default=True, show_default=True, help="Withdraw the operator's fees.")
@click.option(
    "--wait-members",
    type=click.IntRange(0),
    default=300,
    show_default=True,
    help="Seconds to wait for a bonded member before giving up.",
)
def operator_start(
    pool_address: str,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    price_text: str,
    strategy: str,
    device_kind: str,
    device_model: str,
    state_dir: Path,
    withdraw: bool,
    wait_members: int,
) -> None:
    """Bid for the pool, assign each won slot to a member, book slots, collect and withdraw fees."""
    import logging
    import time

    from marketplace.errors import ConfigError
    from marketplace.market.pricing import strategy_from_spec
    from marketplace.types import DeviceKind
    from worker.pool.operator import OperatorSettings, PoolOperatorDaemon

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    contracts = open_contracts(rpc_url, deployment_path)
    pool_ = _pool(contracts, pool_address)
    signer = load_signer(account_address, dev_index, password_file)
    settings = OperatorSettings(
        price_floor=_tokens(price_text),
        strategy=strategy_from_spec(strategy),
        device_model=device_model,
        device_kind=DeviceKind[device_kind.upper()],
        withdraw=withdraw,
    )
    daemon = PoolOperatorDaemon(contracts, signer, pool_, settings, state_dir / f"operator-{pool_.address}.json")
    deadline = time.monotonic() + wait_members
    while not daemon.try_register():
        if time.monotonic() > deadline:
            raise ConfigError(f"pool {pool_.address} has no bonded member after {wait_members} s")
        time.sleep(1.0)
    click.echo(f"operator {signer.address} bidding for pool {pool_.address} with {len(daemon.bonded())} member(s)")
    sys.stdout.flush()
    _serve_until_stopped(daemon, None, "pool operator")


@pool.group("member")
def member_group() -> None:
    """A pool member's worker and daemon."""


@member_group.command("start")
@click.argument("pool_address")
@chain_options
@account_options
@click.option("--stake", "stake_text", default="100", show_default=True, help="Tokens to keep bonded in the pool.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Worker state, uploads, jobs and its receipt key [default: {DEFAULT_HOME}/member-ADDRESS]; "
    "one daemon at a time.",
)
@serve_options
@worker_options
@click.option("--withdraw/--no-withdraw", default=True, show_default=True, help="Withdraw pay as it is booked.")
@click.option(
    "--unsafe-cheat-root", is_flag=True, hidden=True, help="Tests only: commit a root the worker did not produce."
)
def member_start(
    pool_address: str,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    stake_text: str,
    data_dir: Path | None,
    host: str,
    port: int,
    advertise_host: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    plaintext: bool,
    cpu_slots: int,
    unsafe_no_sandbox: bool,
    memory_limit_mb: int,
    withdraw: bool,
    unsafe_cheat_root: bool,
) -> None:
    """Join the pool and serve: the worker runs the slots the operator assigns to this member.

    SIGTERM or Ctrl-C stop it cleanly: running jobs are marked failed, state is kept.
    """
    import logging

    from marketplace.market.pricing import FixedFloor
    from worker.pool.operator import MemberDaemon
    from worker.provider.daemon import ProviderSettings, chain_worker, device_terms
    from worker.testing.cheats import CheatingMember

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signer = load_signer(account_address, dev_index, password_file)
    # Each account its own folder by default, and one live daemon per folder (as providers).
    data_dir = hold_data_dir(data_dir or DEFAULT_HOME / f"member-{signer.address}", "pool member")
    contracts = open_contracts(rpc_url, deployment_path)
    pool_ = _pool(contracts, pool_address)
    stake = _tokens(stake_text)
    if not pool_.member(signer.address).joined:
        _check_stake(pool_, contracts, signer.address, stake)
    server, endpoint = chain_worker(
        contracts,
        data_dir,
        host=host,
        port=port,
        cpu_slots=cpu_slots,
        allow_unsandboxed=unsafe_no_sandbox,
        memory_limit_mb=memory_limit_mb,
        tls=not plaintext,
        tls_cert=tls_cert,
        tls_key=tls_key,
        advertise_host=advertise_host,
    )
    terms = device_terms(server)
    settings = ProviderSettings(
        endpoint=endpoint, price_floor=0, strategy=FixedFloor(), stake=stake, withdraw=withdraw, **terms
    )
    cls = CheatingMember if unsafe_cheat_root else MemberDaemon
    daemon = cls(contracts, signer, server, pool_, settings, data_dir / f"member-{pool_.address}.json")
    try:
        daemon.ensure_registered()
    except BaseException:
        server.stop()
        raise
    server.start()
    click.echo(
        f"member {signer.address} serving {terms['gpu_count']} {terms['device_kind'].name.lower()} "
        f"device(s) on {endpoint} for pool {pool_.address}"
    )
    sys.stdout.flush()
    _serve_until_stopped(daemon, server, "pool member")
