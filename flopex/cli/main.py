"""The ``flopex`` command line.

Domain errors are caught once, here, and printed as one line with a non-zero exit; ``--debug``
shows the traceback instead. Informational commands take ``--json`` and then print exactly one
JSON document to stdout.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from flopex.cli.common import (
    DEFAULT_DEPLOYMENT,
    DEFAULT_HOME,
    FlopexGroup,
    account_options,
    chain_options,
    emit_json,
    environment_options,
    environment_settings,
    fail,
    hold_data_dir,
    load_signer,
    open_contracts,
    serve_options,
    worker_options,
)
from flopex.cli.console import console
from flopex.cli.data import data
from flopex.cli.pool import pool
from flopex.cli.reserve import reserve

__all__ = ["main"]


@click.group(cls=FlopexGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="flopex")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """flopex: a decentralized marketplace for GPU compute."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# ---------------------------------------------------------------------- demo


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole story as one JSON document.")
@click.option("--console", "with_console", is_flag=True, help="Afterwards keep the chain up and serve the web console.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="The console's port.")
def demo(as_json: bool, with_console: bool, port: int) -> None:
    """Run the whole market in one process on the embedded chain (and, with --console, browse it)."""
    from flopex.demo import run_demo
    from marketplace.types import format_tokens

    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"  {line}"))
    if not as_json:
        click.echo("flopex demo: the market on an embedded chain\n")
    report = run_demo(say)
    if as_json:
        emit_json(report.to_json())
        if with_console:
            _demo_console(report, port, err=True)
        return
    click.echo("\nbalances (wallet + credit + stake, FLOP):")
    for name in report.accounts:
        before, after = report.balances_before[name], report.balances_after[name]
        change = after - before
        sign = "+" if change > 0 else ""
        click.echo(
            f"  {name:<11} {format_tokens(before):>14} -> {format_tokens(after):>14}  ({sign}{format_tokens(change)})"
        )
    click.echo(f"\ntokens conserved: {'yes' if report.conserved else 'NO'}; took {report.seconds:.1f} s")
    if with_console:
        _demo_console(report, port)


def _demo_console(report: Any, port: int, err: bool = False) -> None:
    """Serve the console over the demo's embedded chain, with the requester's key for its jobs' logs."""
    from flopex.cli.console import serve_console
    from flopex.demo import ROLES
    from marketplace.chain.client import dev_account

    click.echo("\nthe chain stays up; the console reads it (the demo's workers have stopped: no live logs)", err=err)
    serve_console(
        report.contracts,
        port=port,
        deployment="demo (embedded chain)",
        requester=dev_account(ROLES["requester"]),
        err=err,
    )


# ---------------------------------------------------------------------- chain


@cli.group()
def chain() -> None:
    """Run a local chain."""


@chain.command("up")
@click.option("--port", type=click.IntRange(0, 65535), default=8545, show_default=True, help="Port on 127.0.0.1.")
@click.option(
    "--deployment",
    "deployment_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DEPLOYMENT,
    show_default=True,
    help="Where to write the deployment file.",
)
@click.option(
    "--accounts",
    type=click.IntRange(2, 100),
    default=10,
    show_default=True,
    help="Dev accounts to fund with ether and tokens.",
)
def chain_up(port: int, deployment_path: Path, accounts: int) -> None:
    """A local chain (eth-tester behind JSON-RPC on 127.0.0.1) with flopex deployed."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    from marketplace.chain.client import Chain
    from marketplace.chain.jsonrpc_server import JsonRpcChainServer
    from marketplace.contracts.devmarket import setup_dev_market

    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    local = Chain(Web3(provider), embedded_tester=tester)
    contracts = setup_dev_market(local, accounts=accounts)
    try:
        server = JsonRpcChainServer(provider, tester, port=port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    # Serve before saying so; and a shutdown asked for before serve_forever starts would wait forever.
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.port}"
    from dataclasses import replace

    deployment = replace(contracts.deployment, rpc_url=url)
    deployment.save(deployment_path)
    # Listen for SIGTERM before saying we are up: whoever reads that line may stop us at once.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"chain {local.chain_id} listening on {url}")
    click.echo(f"deployment written to {deployment_path}")
    click.echo(f"market {deployment.market}, token {deployment.token}, registry {deployment.registry}")
    click.echo(f"dev accounts 0..{accounts - 1} funded (0 deploys and mints, 1 is the treasury)", err=False)
    sys.stdout.flush()
    try:
        # With a timeout: a signal the kernel hands to another thread only runs its Python handler
        # when the main thread next wakes, and an untimed wait may never wake.
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        click.echo("chain stopped")


@cli.command()
@click.option("--rpc-url", required=True, help="JSON-RPC URL of the chain.")
@click.option(
    "--deployment",
    "deployment_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_DEPLOYMENT,
    show_default=True,
    help="Where to write the deployment file.",
)
@click.option(
    "--dev",
    "dev_index",
    type=click.IntRange(0, 1000),
    default=None,
    help="Deploy from dev account N and fund dev accounts (dev chains such as anvil only).",
)
@click.option(
    "--key-env",
    default="FLOPEX_DEPLOYER_KEY",
    show_default=True,
    help="Environment variable holding the deployer's private key (when not --dev).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def deploy(rpc_url: str, deployment_path: Path, dev_index: int | None, key_env: str, as_json: bool) -> None:
    """Deploy the contracts to any chain and write a deployment file."""
    from dataclasses import asdict, replace

    from eth_account import Account

    from marketplace.chain.client import Chain
    from marketplace.contracts.deployment import deploy_all
    from marketplace.contracts.devmarket import setup_dev_market
    from marketplace.errors import ConfigError

    chain_ = Chain.connect(rpc_url)
    if dev_index is not None:
        contracts = setup_dev_market(chain_)
    else:
        key = os.environ.get(key_env)
        if not key:
            raise ConfigError(f"set {key_env} to the deployer's private key, or use --dev on a dev chain")
        try:
            account = Account.from_key(key)
        except Exception as exc:
            raise ConfigError(f"{key_env} does not hold a valid private key") from exc
        contracts = deploy_all(chain_, account)
    deployment = replace(contracts.deployment, rpc_url=rpc_url)
    deployment.save(deployment_path)
    if as_json:
        emit_json(asdict(deployment))
    else:
        click.echo(f"deployed to chain {deployment.chain_id}: market {deployment.market}")
        click.echo(f"deployment written to {deployment_path}")


# ---------------------------------------------------------------------- shared options


# ---------------------------------------------------------------------- accounts


@cli.group()
def account() -> None:
    """Encrypted keys (geth/Foundry keystore files)."""


def _new_password(password_file: Path | None) -> str:
    from marketplace.chain.accounts import read_password

    password = read_password(password_file)
    if password is None:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    return password


@account.command("new")
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--json", "as_json", is_flag=True)
def account_new(password_file: Path | None, as_json: bool) -> None:
    """Create a key and store it encrypted."""
    from marketplace.chain.accounts import Keystore

    created = Keystore(DEFAULT_HOME / "keystore").new(_new_password(password_file))
    emit_json({"address": created.address}) if as_json else click.echo(created.address)


@account.command("import")
@click.argument("source", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--private-key", is_flag=True, help="SOURCE holds a hex private key rather than a keystore file.")
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
def account_import(source: Path, private_key: bool, password_file: Path | None) -> None:
    """Import a geth/Foundry keystore file, or a hex private key from a file."""
    from marketplace.chain.accounts import Keystore

    store = Keystore(DEFAULT_HOME / "keystore")
    password = _new_password(password_file)
    if private_key:
        imported = store.import_key(source.read_text(), password)
    else:
        imported = store.import_file(source, password)
    click.echo(imported.address)


@account.command("list")
@click.option("--json", "as_json", is_flag=True)
def account_list(as_json: bool) -> None:
    """List the keystore's addresses."""
    from marketplace.chain.accounts import Keystore

    addresses = Keystore(DEFAULT_HOME / "keystore").addresses()
    if as_json:
        emit_json(addresses)
    else:
        for address in addresses:
            click.echo(address)


@account.command("balance")
@click.argument("address", required=False)
@chain_options
@click.option("--account", "account_address", default=None, help="Address of a keystore key (same as ADDRESS).")
@click.option("--dev", "dev_index", type=click.IntRange(0, 1000), default=None, help="Dev account N.")
@click.option("--json", "as_json", is_flag=True)
def account_balance_cmd(
    address: str | None,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    as_json: bool,
) -> None:
    """An account's wallet, credits to withdraw (market, reservations, pools), stake, locked and unbonding."""
    from marketplace.chain.client import dev_account
    from marketplace.errors import ConfigError
    from marketplace.market.balances import account_balance, checked_address
    from marketplace.types import format_tokens

    given = [a for a in (address, account_address) if a is not None]
    if len(given) + (dev_index is not None) != 1:
        raise ConfigError("name one account: ADDRESS, --account ADDRESS or --dev N")
    who = dev_account(dev_index).address if dev_index is not None else checked_address(given[0])
    balance = account_balance(open_contracts(rpc_url, deployment_path), who)
    if as_json:
        emit_json(balance)
        return
    credits, stake = balance["credits"], balance["stake"]
    click.echo(f"account {balance['address']}")
    click.echo(f"  wallet       {format_tokens(balance['wallet']):>16} FLOP")
    click.echo(f"  credits      {format_tokens(balance['credits_total']):>16} FLOP to withdraw", nl=False)
    parts = [f"market {format_tokens(credits['market'])}"]
    if "reservations" in credits:
        parts.append(f"reservations {format_tokens(credits['reservations'])}")
    parts += [f"pool {p} {format_tokens(v)}" for p, v in credits["pools"].items()]
    click.echo(f" ({', '.join(parts)})")
    click.echo(
        f"  stake        {format_tokens(stake['active']):>16} FLOP active ({format_tokens(stake['locked'])} locked by "
        f"{stake['active_jobs']} running lease(s)), {format_tokens(stake['unbonding'])} unbonding"
    )
    for pool_address, member in balance["pool_stakes"].items():
        click.echo(
            f"  pool stake   {format_tokens(member['stake']):>16} FLOP in {pool_address}, "
            f"{format_tokens(member['unbonding'])} unbonding"
        )
    click.echo(f"  total        {format_tokens(balance['total']):>16} FLOP")


@account.command("withdraw")
@chain_options
@account_options
@click.option("--json", "as_json", is_flag=True)
def account_withdraw(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    as_json: bool,
) -> None:
    """Pull every credit of the account (market, reservations, pools) into its wallet."""
    from marketplace.market.balances import withdraw_all
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    pulled = withdraw_all(contracts, signer)
    wallet = contracts.token.balance_of(signer.address)
    if as_json:
        emit_json({"address": signer.address, "withdrawn": pulled, "total": sum(pulled.values()), "wallet": wallet})
        return
    if not pulled:
        click.echo(f"{signer.address} has no credit to withdraw")
        return
    for source, amount in pulled.items():
        click.echo(f"withdrew {format_tokens(amount)} FLOP from the {source}")
    click.echo(f"{signer.address} now holds {format_tokens(wallet)} FLOP in its wallet")


@account.command("payout")
@click.argument("mode", required=False, type=click.Choice(["direct", "credit"]))
@chain_options
@account_options
@click.option("--json", "as_json", is_flag=True)
def account_payout(
    mode: str | None,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    as_json: bool,
) -> None:
    """How the market pays the account: ``direct`` (a transfer when a job settles, no withdrawal; about
    110k gas less per job for a provider and its requester) or ``credit`` (kept until ``account
    withdraw``, the default). Without MODE, shows the current one. A transfer the token refuses is
    kept as a credit, so settling never blocks."""
    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    if mode is not None and contracts.market.direct_payout(signer.address) != (mode == "direct"):
        contracts.market.set_direct_payout(signer, mode == "direct")
    current = "direct" if contracts.market.direct_payout(signer.address) else "credit"
    credit = contracts.market.credits(signer.address)
    if as_json:
        emit_json({"address": signer.address, "payout": current, "credits": credit})
        return
    click.echo(f"{signer.address} is paid by {current}" + (" (at settlement)" if current == "direct" else ""))
    if credit:
        from marketplace.types import format_tokens

        click.echo(f"it still holds {format_tokens(credit)} FLOP of credit: flopex account withdraw")


# ---------------------------------------------------------------------- provider


@cli.group()
def provider() -> None:
    """Run a provider."""


@provider.command("start")
@chain_options
@account_options
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Worker state, uploads, jobs and its receipt key [default: {DEFAULT_HOME}/provider-ADDRESS]; "
    "one daemon at a time.",
)
@serve_options
@click.option("--price", "price_text", default="1", show_default=True, help="Price floor, tokens per GPU-hour.")
@click.option(
    "--strategy",
    default="fixed",
    show_default=True,
    help="Pricing strategy: fixed | ramp:slope=S | decay:start=A,min=B,half_life=T | follow:undercut=U.",
)
@click.option("--stake", "stake_text", default="200", show_default=True, help="Tokens to keep staked.")
@click.option(
    "--max-run-hours",
    type=click.FloatRange(min=0, min_open=True),
    default=48.0,
    show_default=True,
    help="Bid only for jobs whose run duration is at most this (each lease locks stake that long).",
)
@click.option(
    "--max-challenge-hours",
    type=click.FloatRange(min=0, min_open=True),
    default=24.0,
    show_default=True,
    help="Bid only for jobs whose challenge window is at most this.",
)
@worker_options
@environment_options
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port) [default: off].",
)
def provider_start(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    data_dir: Path | None,
    host: str,
    port: int,
    advertise_host: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    plaintext: bool,
    price_text: str,
    strategy: str,
    stake_text: str,
    max_run_hours: float,
    max_challenge_hours: float,
    cpu_slots: int,
    unsafe_no_sandbox: bool,
    memory_limit_mb: int,
    package_index: str,
    find_links: tuple[Path, ...],
    env_cache_gb: float,
    metrics_port: int | None,
) -> None:
    """The provider daemon: stake, register, serve gRPC, bid, run, commit, settle, withdraw.

    SIGTERM or Ctrl-C stop it cleanly: running jobs are marked failed, state is kept.
    """
    import logging

    from marketplace.market.pricing import strategy_from_spec
    from marketplace.types import parse_tokens
    from worker.provider.daemon import ProviderDaemon, ProviderSettings, chain_worker, device_terms

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signer = load_signer(account_address, dev_index, password_file)
    # Each account its own folder by default, and one live daemon per folder.
    data_dir = hold_data_dir(data_dir or DEFAULT_HOME / f"provider-{signer.address}", "provider")
    contracts = open_contracts(rpc_url, deployment_path)
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
        environments=environment_settings(data_dir, package_index, find_links, env_cache_gb),
    )
    terms = device_terms(server)
    settings = ProviderSettings(
        endpoint=endpoint,
        price_floor=parse_tokens(price_text),
        strategy=strategy_from_spec(strategy),
        stake=parse_tokens(stake_text),
        max_run_s=int(max_run_hours * 3600),
        max_challenge_s=int(max_challenge_hours * 3600),
        **terms,
    )
    daemon = ProviderDaemon(contracts, signer, server, settings, data_dir / "provider-state.json")
    daemon.ensure_registered()
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(
        f"provider {signer.address} serving {terms['gpu_count']} {terms['device_kind'].name.lower()} "
        f"device(s) on {endpoint}"
    )
    metrics = None
    if metrics_port is not None:
        from worker.provider.metrics import serve_metrics

        try:
            metrics = serve_metrics(daemon, metrics_port)
        except OSError as exc:
            server.stop()
            raise click.ClickException(f"cannot serve metrics on 127.0.0.1:{metrics_port}: {exc.strerror}") from exc
        click.echo(f"metrics on {metrics.url}")
    sys.stdout.flush()
    daemon.start()
    try:
        while not stop.wait(0.5) and not daemon.stopped:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if metrics is not None:
            metrics.stop()
        daemon.stop()
        server.stop()
        click.echo("provider stopped")
    if daemon.fatal:
        fail(daemon.fatal)


# ---------------------------------------------------------------------- jobs


@cli.group()
def job() -> None:
    """Submit and follow jobs."""


def _requester_data_dir(fn: Any) -> Any:
    """--data-dir for the requester's job records."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Where the requester keeps a record of each job it posts [default: {DEFAULT_HOME}/requester-ADDRESS].",
    )(fn)


def _records(data_dir: Path | None, address: str) -> Any:
    from marketplace.requester.records import RecordStore

    return RecordStore(data_dir or DEFAULT_HOME / f"requester-{address}")


def _follow_to_the_end(
    requester: Any, records: Any, job_id: int, as_json: bool, extra: dict[str, Any] | None = None, **follow: Any
) -> None:
    """Follow a job to its end under its lock, print its outcome (``extra`` added to the JSON), and exit
    non-zero unless it succeeded."""
    contracts = requester.contracts
    try:
        with records.hold(contracts.chain.chain_id, contracts.market.address, job_id):
            outcome = requester.follow(job_id, **follow)
    except KeyboardInterrupt:
        click.echo(f"error: interrupted; job {job_id} goes on: `flopex job follow {job_id}` picks it up", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        # At once: a slot's thread may be watching a long run, and waiting for it is what Ctrl-C
        # asked not to do. The job's record is on disk already (written atomically).
        os._exit(130)
    if as_json:
        emit_json({**outcome.to_json(), **(extra or {})})
    if not outcome.ok:  # failed, expired, cancelled, slashed, a dispute lost, refunded, undelivered
        fail(f"job {job_id} {outcome.status}: {outcome.reason}")


@job.command("submit")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@chain_options
@account_options
@click.option("--max-price", "max_price_text", default=None, help="Tokens per GPU-hour at most [default: job.toml].")
@click.option("--auction", type=click.Choice(["sealed", "instant"]), default=None)
@click.option(
    "--verify",
    "policy",
    type=click.Choice(["none", "redundant", "replay", "freivalds", "optimistic"]),
    default=None,
    help="Verification policy [default: job.toml].",
)
@click.option("--redundancy", type=click.IntRange(1, 5), default=None)
@click.option("--bid-window", type=click.IntRange(1), default=20, show_default=True, help="Seconds of bidding.")
@click.option(
    "--challenge-window",
    type=click.IntRange(1),
    default=None,
    help="Seconds to accept, dispute or check a result [default: sized from the job's timeout and policy].",
)
@click.option("--wait/--no-wait", default=False, help="Follow the job to its end and download the results.")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where results go (with --wait) [default: ./results-JOB].",
)
@_requester_data_dir
@click.option("--json", "as_json", is_flag=True)
def job_submit(
    bundle: Path,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    max_price_text: str | None,
    auction: str | None,
    policy: str | None,
    redundancy: int | None,
    bid_window: int,
    challenge_window: int | None,
    wait: bool,
    output: Path | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Post BUNDLE's job; with --wait, follow it to results and a bill.

    The job's record (bundle, output folder, options) is kept in the requester's data folder, so
    `flopex job follow JOB` picks it up after a crash, a Ctrl-C or a submit without --wait.
    """
    from marketplace.protocol.bundle import load_bundle
    from marketplace.requester.requester import JobOptions, Requester
    from marketplace.types import Auction, Policy, parse_tokens

    loaded = load_bundle(bundle)  # a bad job.toml is one line before anything touches the chain
    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    say = (lambda _line: None) if as_json else click.echo
    checks = _preflight(contracts, loaded, policy, redundancy, challenge_window)
    records = _records(data_dir, signer.address)
    requester = Requester(contracts, signer, say=say, records=records)
    options = JobOptions(
        max_price=parse_tokens(max_price_text) if max_price_text else None,
        auction=Auction[auction.upper()] if auction else None,
        policy=Policy[policy.upper()] if policy else None,
        redundancy=redundancy,
        bid_window_s=bid_window,
        reveal_window_s=bid_window,
        challenge_window_s=checks.challenge_window_s,
    )
    job_id = requester.submit(bundle, options, out_dir=output)
    if not wait:
        if as_json:
            emit_json({"job_id": job_id, "preflight": checks.to_json()})
        else:
            click.echo(f"`flopex job follow {job_id}` follows it to its end")
        return
    _follow_to_the_end(
        requester, records, job_id, as_json, {"preflight": checks.to_json()}, out_dir=output, timeout_s=3600.0
    )


@job.command("follow")
@click.argument("job_id", type=click.IntRange(1))
@chain_options
@account_options
@click.option(
    "-o",
    "--out",
    "output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where results go [default: the folder the job was submitted with, else ./results-JOB].",
)
@click.option(
    "--bundle",
    "bundle_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The bundle the job was posted with, when its worker lacks it and no record of it is kept here.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(1.0),
    default=3600.0,
    show_default=True,
    help="Seconds to wait for each stage (the lease, the run, the settlement).",
)
@_requester_data_dir
@click.option("--json", "as_json", is_flag=True)
def job_follow(
    job_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    output: Path | None,
    bundle_dir: Path | None,
    timeout_s: float,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Pick a job up wherever it stands and follow it to its end, as `job submit --wait` does.

    Open: waits and ends the auction at its deadline (an instant job nobody took is expired and
    its escrow refunded). Leased: uploads the bundle if the worker lacks it, follows the run,
    fetches the results, checks them against the chain, accepts or disputes, settles. Disputed:
    waits for the ruling. Settled: prints the outcome and the bill. Exits non-zero unless the job
    succeeded.
    """
    from marketplace.requester.requester import Requester

    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    say = (lambda _line: None) if as_json else click.echo
    records = _records(data_dir, signer.address)
    requester = Requester(contracts, signer, say=say, records=records)
    _follow_to_the_end(requester, records, job_id, as_json, out_dir=output, timeout_s=timeout_s, bundle_dir=bundle_dir)


def _preflight(contracts: Any, bundle: Any, policy: str | None, redundancy: int | None, window: int | None) -> Any:
    """The checks before a job's money moves (marketplace.requester.preflight); warnings go to stderr."""
    from marketplace.requester.preflight import preflight
    from marketplace.types import Policy

    checks = preflight(
        contracts,
        bundle,
        policy=Policy[policy.upper()] if policy else None,
        redundancy=redundancy,
        challenge_window_s=window,
    )
    for line in checks.warnings:
        click.echo(f"warning: {line}", err=True)
    if checks.check is not None and checks.check.degraded:
        click.echo(f"note: {checks.check.line}", err=True)
    return checks


def _job_summary(contracts: Any, job_id: int) -> dict[str, Any]:
    from marketplace.market.summary import job_summary

    return job_summary(contracts, job_id)


@job.command("status")
@click.argument("job_id", type=click.IntRange(1))
@chain_options
@click.option("--json", "as_json", is_flag=True)
def job_status(job_id: int, rpc_url: str | None, deployment_path: Path, as_json: bool) -> None:
    """Where a job stands on chain, and which command moves it on."""
    from marketplace.errors import ConfigError
    from marketplace.requester.requester import next_step

    contracts = open_contracts(rpc_url, deployment_path)
    count = contracts.market.job_count()
    if job_id > count:
        raise ConfigError(f"there is no job {job_id} on the market at {contracts.market.address} ({count} posted)")
    summary = _job_summary(contracts, job_id)
    summary["next"] = next_step(contracts, job_id)
    if as_json:
        emit_json(summary)
        return
    click.echo(f"job {job_id}: {summary['status']} ({summary['auction']} auction, {summary['policy']} verification)")
    if summary["reason"]:
        click.echo(f"  {summary['reason']}")
    for s in summary["slots"]:
        line = f"  slot {s['slot']}: {s['provider']} {s['status']} at {s['price']} units/GPU-h"
        click.echo(line + (f": {s['reason']}" if s["reason"] else ""))
    if summary["next"]:
        click.echo(f"  next: {summary['next']}")


@job.command("list")
@chain_options
@click.option("--json", "as_json", is_flag=True)
def job_list(rpc_url: str | None, deployment_path: Path, as_json: bool) -> None:
    """Every job on the market."""
    contracts = open_contracts(rpc_url, deployment_path)
    jobs = [_job_summary(contracts, i) for i in range(1, contracts.market.job_count() + 1)]
    if as_json:
        emit_json(jobs)
        return
    for j in jobs:
        click.echo(f"{j['job_id']:>5}  {j['status']:<9} {j['auction']:<8} {j['policy']:<11} {j['requester']}")


@job.command("cancel")
@click.argument("job_id", type=click.IntRange(1))
@chain_options
@account_options
def job_cancel(
    job_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
) -> None:
    """Withdraw an open job before its bid deadline; its escrow becomes withdrawable credit."""
    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    contracts.market.cancel_job(signer, job_id)
    from marketplace.types import format_tokens

    credit = format_tokens(contracts.market.credits(signer.address))
    click.echo(f"job {job_id} cancelled; {credit} FLOP to withdraw (`flopex account withdraw`)")


@job.command("result")
@click.argument("job_id", type=click.IntRange(1))
@chain_options
@account_options
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True)
def job_result(
    job_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    output: Path,
) -> None:
    """Download a job's results from its provider(s) and check them against the on-chain root."""
    from marketplace.errors import VerificationError, WorkerError
    from marketplace.protocol.auth import Domain
    from marketplace.requester.client import WorkerClient

    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    domain = Domain(contracts.chain.chain_id, contracts.market.address)
    from marketplace.market.routing import slot_worker

    failed: list[int] = []
    for slot in contracts.market.slots_of(job_id):
        worker = slot_worker(contracts, job_id, slot.slot, slot.provider)  # a pool's slot: its member's worker
        if worker is None:
            raise VerificationError(f"job {job_id} slot {slot.slot}: the pool has not assigned it to a member yet")
        try:
            with WorkerClient(worker.endpoint, requester_key=signer.key, domain=domain) as client:
                results = client.download_results(job_id, output / f"slot-{slot.slot}", provider=worker.signer)
        except WorkerError as exc:  # nothing is said to match what never arrived
            click.echo(f"slot {slot.slot}: results not downloaded: {exc}", err=True)
            failed.append(slot.slot)
            continue
        if slot.result_root != results.manifest.root:
            raise VerificationError(f"job {job_id} slot {slot.slot}: results differ from the root committed on chain")
        click.echo(
            f"slot {slot.slot}: {len(results.manifest.files)} file(s) in {output / f'slot-{slot.slot}'}, "
            f"root {results.manifest.root.hex()[:16]}… matches the chain"
        )
    if failed:
        raise WorkerError(f"job {job_id}: the results of slot(s) {', '.join(map(str, failed))} could not be downloaded")


# ---------------------------------------------------------------------- verifier


@cli.group()
def verifier() -> None:
    """Run a verifier."""


@verifier.command("start")
@chain_options
@account_options
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where fetched results and replays go [default: {DEFAULT_HOME}/verifier-ADDRESS]; one daemon at a time.",
)
@click.option("--stake", "stake_text", default="100", show_default=True, help="Tokens to keep staked.")
@click.option(
    "--replay-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.07,
    show_default=True,
    help="Share of a replay job's segments re-run.",
)
@click.option(
    "--capacity-interval",
    type=click.FloatRange(0.0),
    default=0.0,
    show_default=True,
    help="Seconds between capacity challenges of each provider (0: only at registration).",
)
@click.option(
    "--reservation-probe-attempts",
    type=click.IntRange(1, 100),
    default=3,
    show_default=True,
    help="Failed probes in a row before a reservation reported not served is attested failed.",
)
@click.option(
    "--reservation-probe-interval",
    type=click.FloatRange(0.0),
    default=10.0,
    show_default=True,
    help="Seconds between probes of a reported reservation's worker.",
)
@click.option("--unsafe-no-sandbox", is_flag=True, help="Replay jobs without bubblewrap (only for code you trust).")
@environment_options
def verifier_start(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    data_dir: Path | None,
    stake_text: str,
    replay_fraction: float,
    capacity_interval: float,
    reservation_probe_attempts: int,
    reservation_probe_interval: float,
    unsafe_no_sandbox: bool,
    package_index: str,
    find_links: tuple[Path, ...],
    env_cache_gb: float,
) -> None:
    """The verifier daemon: check results by their policy, attest, dispute, challenge capacity, judge reservations.

    SIGTERM or Ctrl-C stop it cleanly.
    """
    import logging

    from marketplace.types import parse_tokens
    from worker.verifier.daemon import VerifierSettings, run_verifier

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    signer = load_signer(account_address, dev_index, password_file)
    data_dir = hold_data_dir(data_dir or DEFAULT_HOME / f"verifier-{signer.address}", "verifier")
    contracts = open_contracts(rpc_url, deployment_path)
    settings = VerifierSettings(
        data_dir=data_dir,
        stake=parse_tokens(stake_text),
        replay_fraction=replay_fraction,
        capacity_interval_s=capacity_interval,
        allow_unsandboxed=unsafe_no_sandbox,
        reservation_probe_attempts=reservation_probe_attempts,
        reservation_probe_interval_s=reservation_probe_interval,
        environments=environment_settings(data_dir, package_index, find_links, env_cache_gb),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo(f"verifier {signer.address} watching market {contracts.market.address}")
    sys.stdout.flush()
    try:
        run_verifier(contracts, signer, settings, stop)
    except KeyboardInterrupt:
        pass
    click.echo("verifier stopped")


# ---------------------------------------------------------------------- market


@cli.group(invoke_without_command=True)
@chain_options
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--probe-timeout",
    type=click.FloatRange(min=0.1, max=60),
    default=2.0,
    show_default=True,
    help="Seconds each provider's worker gets to answer GetInfo (all are asked at once).",
)
@click.option("--no-probe", is_flag=True, help="Do not ask providers' workers whether they answer.")
@click.pass_context
def market(
    ctx: click.Context,
    rpc_url: str | None,
    deployment_path: Path,
    as_json: bool,
    probe_timeout: float,
    no_probe: bool,
) -> None:
    """Open jobs, providers (and whether their workers answer), and recent clearing prices (and the price index)."""
    if ctx.invoked_subcommand is not None:
        return
    from marketplace.types import DeviceKind, JobStatus, format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    m, registry = contracts.market, contracts.registry
    start = contracts.deployment.start_block
    open_jobs = [_job_summary(contracts, i) for i in range(1, m.job_count() + 1) if m.job(i).status == JobStatus.OPEN]
    providers = {}
    for event in registry.get_events("ProviderRegistered", start):
        providers[event.provider] = {
            "provider": event.provider,
            "device_kind": DeviceKind(event.device_kind).name.lower(),
            "gpus": event.gpu_count,
            "memory_mb": event.memory_mb,
            "price_floor": event.price_floor,
            "endpoint": event.endpoint,
        }
    for address, row in providers.items():
        row["price_floor"] = registry.price_floor(address)  # as posted now (strategies move it)
    _mark_reachability(list(providers.values()), deployment_path, None if no_probe else probe_timeout)
    prices: dict[str, list[int]] = {}
    for event in m.get_events("SlotLeased", start):
        kind = m.spec(event.job_id).device_kind.name.lower()
        prices.setdefault(kind, []).append(event.price)
    for_sale = []
    if contracts.reservations is not None:
        from marketplace.market.summary import reservation_summary

        now = contracts.chain.next_timestamp()
        for rid in range(1, contracts.reservations.offer_count() + 1):
            state = contracts.reservations.reservation(rid)
            if state.for_sale(now):
                for_sale.append(reservation_summary(state, now))
    document = {
        "open_jobs": open_jobs,
        "providers": list(providers.values()),
        "clearing_prices": {k: v[-20:] for k, v in prices.items()},
        "reservations_for_sale": for_sale,
    }
    if as_json:
        emit_json(document)
        return
    down = sum(p["reachable"] is False for p in providers.values())
    click.echo(
        f"{len(open_jobs)} open job(s), {len(providers)} provider(s)" + (f", {down} not answering" if down else "")
    )
    for p in providers.values():
        click.echo(
            f"  {p['provider']}  {p['gpus']}x {p['device_kind']}  floor {format_tokens(p['price_floor'])}"
            f"  {p['endpoint']}  {_reach_text(p)}"
        )
    for kind, values in prices.items():
        recent = ", ".join(format_tokens(v) for v in values[-5:])
        click.echo(f"  recent {kind} clearing prices: {recent}")
    for r in for_sale:
        ask = f"resale at {format_tokens(r['resale_price'])}" if r["resale_price"] else f"{format_tokens(r['value'])}"
        click.echo(
            f"  reservation {r['reservation_id']} for sale: {r['gpus']} device(s) of {r['provider']} from "
            f"{r['start']} for {r['duration']} s at {format_tokens(r['price'])}/GPU-h ({ask} FLOP)"
        )


def _mark_reachability(rows: list[dict[str, Any]], deployment_path: Path, timeout_s: float | None) -> None:
    """Probe each provider row's endpoint (all at once) and add ``reachable``, ``reach_detail``,
    ``checked_at``, ``latency_ms`` and ``last_answered`` (Unix times; from a book kept next to the
    deployment file). ``timeout_s`` None: nothing is asked and ``reachable`` is None.
    """
    from marketplace.requester.probe import AnswerBook, probe_endpoints

    book = AnswerBook(deployment_path.parent / "market-answers.json")
    probes = {} if timeout_s is None else probe_endpoints([r["endpoint"] for r in rows], timeout_s)
    book.record(probes.values())
    for row in rows:
        probe = probes.get(row["endpoint"])
        row["reachable"] = None if probe is None else probe.reachable
        row["reach_detail"] = "not probed" if probe is None else probe.detail
        row["checked_at"] = None if probe is None else round(probe.checked_at, 3)
        row["latency_ms"] = None if probe is None else probe.latency_ms
        last = book.last_answered(row["endpoint"])
        row["last_answered"] = None if last is None else round(last, 3)


def _reach_text(row: dict[str, Any]) -> str:
    """One provider's reachability for the text view of ``flopex market``."""
    import time

    if row["reachable"] is None:
        return "(not probed)"
    if row["reachable"]:
        return f"answers ({row['latency_ms']} ms)"
    last = row["last_answered"]
    when = "never answered here" if last is None else f"last answered {_ago(time.time() - last)} ago"
    return f"NOT ANSWERING ({when}): {row['reach_detail']}"


def _ago(seconds: float) -> str:
    """``seconds`` as a short duration: 40 s, 12 min, 3 h, 2 d."""
    if seconds < 120:
        return f"{max(0, int(seconds))} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _market_contracts(ctx: click.Context, rpc_url: str | None, deployment_path: Path) -> Any:
    """The contracts for a `market` subcommand; --rpc-url/--deployment may also come before it."""
    parent = ctx.parent.params if ctx.parent is not None else {}
    if rpc_url is None:
        rpc_url = parent.get("rpc_url")
    if deployment_path == DEFAULT_DEPLOYMENT and parent.get("deployment_path") is not None:
        deployment_path = parent["deployment_path"]
    return open_contracts(rpc_url, deployment_path)


@market.command("index")
@chain_options
@click.option(
    "--window",
    "windows",
    multiple=True,
    default=("1h", "24h", "all"),
    show_default=True,
    help="Window to compute over (30m, 1h, 24h, 7d, all); repeat for several.",
)
@click.option("--block", type=click.IntRange(0), default=None, help="Compute as of this block [default: latest].")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def market_index(
    ctx: click.Context,
    rpc_url: str | None,
    deployment_path: Path,
    windows: tuple[str, ...],
    block: int | None,
    as_json: bool,
) -> None:
    """The compute price index per device class: TWAP, volume, leases, min/max/last; from chain events alone."""
    from marketplace.market.index import compute_index, format_index, index_document, read_history

    contracts = _market_contracts(ctx, rpc_url, deployment_path)
    index = compute_index(read_history(contracts, block=block), windows)
    if as_json:
        emit_json(index_document(index))
        return
    for line in format_index(index):
        click.echo(line)


@market.command("report")
@chain_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.png"),
    show_default=True,
    help="Where the PNG goes.",
)
@click.option("--window", default="24h", show_default=True, help="Window the chart shows (30m, 1h, 24h, 7d, all).")
@click.option("--block", type=click.IntRange(0), default=None, help="Compute as of this block [default: latest].")
@click.option("--json", "as_json", is_flag=True, help="Also print the index as JSON.")
@click.pass_context
def market_report(
    ctx: click.Context,
    rpc_url: str | None,
    deployment_path: Path,
    output: Path,
    window: str,
    block: int | None,
    as_json: bool,
) -> None:
    """Draw the price index as a PNG chart: clearing prices per class with their TWAP, and volume."""
    from marketplace.market.chart import render_report
    from marketplace.market.index import compute_index, index_document, read_history

    contracts = _market_contracts(ctx, rpc_url, deployment_path)
    index = compute_index(read_history(contracts, block=block), [window])
    path = render_report(index, output, window=window)
    if as_json:
        emit_json({**index_document(index), "report": str(path)})
    else:
        click.echo(f"price index chart written to {path}")


cli.add_command(console)
cli.add_command(data)
cli.add_command(pool)
cli.add_command(reserve)


def main() -> None:
    """Entry point of the ``flopex`` console script."""
    cli(obj={})


if __name__ == "__main__":
    main()
