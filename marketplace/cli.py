"""The ``flopex`` command line.

Domain errors are caught once, here, and printed as one line with a non-zero exit; ``--debug``
shows the traceback instead. Informational commands take ``--json`` and then print exactly one
JSON document to stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import click

from marketplace.errors import FlopexError

__all__ = ["main"]

DEFAULT_HOME = Path(os.environ.get("FLOPEX_HOME", ".flopex"))
DEFAULT_DEPLOYMENT = DEFAULT_HOME / "deployment.json"


class FlopexGroup(click.Group):
    """A click group that turns flopex's errors into one clean line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FlopexError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", code=130)


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


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
def demo(as_json: bool) -> None:
    """Run the whole market in one process on the embedded chain."""
    from marketplace.demo import run_demo
    from marketplace.types import format_tokens

    say = (lambda _line: None) if as_json else (lambda line: click.echo(f"  {line}"))
    if not as_json:
        click.echo("flopex demo: the market on an embedded chain\n")
    report = run_demo(say)
    if as_json:
        _emit_json(report.to_json())
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


# ---------------------------------------------------------------------- chain


@cli.group()
def chain() -> None:
    """Run a local chain."""


@chain.command("up")
@click.option("--port", type=click.IntRange(0, 65535), default=8545, show_default=True, help="Port on 127.0.0.1.")
@click.option("--deployment", "deployment_path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_DEPLOYMENT, show_default=True, help="Where to write the deployment file.")
@click.option("--accounts", type=click.IntRange(2, 100), default=10, show_default=True,
              help="Dev accounts to fund with ether and tokens.")
def chain_up(port: int, deployment_path: Path, accounts: int) -> None:
    """A local chain (eth-tester behind JSON-RPC on 127.0.0.1) with flopex deployed."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    from marketplace.chain import Chain
    from marketplace.devchain import setup_dev_market
    from marketplace.rpcserver import JsonRpcChainServer

    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    local = Chain(Web3(provider), embedded_tester=tester)
    contracts = setup_dev_market(local, accounts=accounts)
    try:
        server = JsonRpcChainServer(provider, tester, port=port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from exc
    url = f"http://127.0.0.1:{server.port}"
    from dataclasses import replace

    deployment = replace(contracts.deployment, rpc_url=url)
    deployment.save(deployment_path)
    click.echo(f"chain {local.chain_id} listening on {url}")
    click.echo(f"deployment written to {deployment_path}")
    click.echo(f"market {deployment.market}, token {deployment.token}, registry {deployment.registry}")
    click.echo(f"dev accounts 0..{accounts - 1} funded (0 deploys and mints, 1 is the treasury)", err=False)
    sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        click.echo("chain stopped")


@cli.command()
@click.option("--rpc-url", required=True, help="JSON-RPC URL of the chain.")
@click.option("--deployment", "deployment_path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_DEPLOYMENT, show_default=True, help="Where to write the deployment file.")
@click.option("--dev", "dev_index", type=click.IntRange(0, 1000), default=None,
              help="Deploy from dev account N and fund dev accounts (dev chains such as anvil only).")
@click.option("--key-env", default="FLOPEX_DEPLOYER_KEY", show_default=True,
              help="Environment variable holding the deployer's private key (when not --dev).")
@click.option("--json", "as_json", is_flag=True, help="Print the deployment as JSON.")
def deploy(rpc_url: str, deployment_path: Path, dev_index: int | None, key_env: str, as_json: bool) -> None:
    """Deploy the contracts to any chain and write a deployment file."""
    from dataclasses import asdict, replace

    from eth_account import Account

    from marketplace.bindings import deploy_all
    from marketplace.chain import Chain
    from marketplace.devchain import setup_dev_market
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
        _emit_json(asdict(deployment))
    else:
        click.echo(f"deployed to chain {deployment.chain_id}: market {deployment.market}")
        click.echo(f"deployment written to {deployment_path}")


def main() -> None:
    """Entry point of the ``flopex`` console script."""
    cli(obj={})


if __name__ == "__main__":
    main()
