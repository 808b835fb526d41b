"""``flopex console``: the web console, a read-only view of one market in the browser.

It reads the chain named by ``--rpc-url``/``--deployment`` (as every chain command) and serves
the market, job and account pages on 127.0.0.1. It sends no transactions and holds no key,
except, with ``--account``/``--dev``, the requester's, to sign requests for its jobs' log lines.
See docs/console.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flopex.cli.common import DEFAULT_HOME, account_options, chain_options, load_signer, open_contracts

__all__ = ["console", "serve_console"]


def serve_console(
    contracts: Any,
    *,
    port: int,
    host: str = "127.0.0.1",
    deployment: str | None = None,
    data_dir: Path | None = None,
    requester: Any = None,
    err: bool = False,
) -> None:
    """Serve the console over ``contracts`` in the foreground until Ctrl-C; ``err`` says so on stderr."""
    from flopex.console.app import create_app
    from flopex.console.reader import MarketReader
    from flopex.console.server import serve

    reader = MarketReader(contracts, deployment_path=deployment, data_dir=data_dir, requester=requester)
    try:
        click.echo(
            f"console: indexing market {contracts.market.address} on chain {contracts.chain.chain_id} …", err=err
        )
        reader.sync()

        def ready(url: str) -> None:
            click.echo(f"console on {url} (read only; Ctrl-C stops it)", err=err)

        serve(create_app(reader), host=host, port=port, ready=ready)
    finally:
        reader.close()
    click.echo("console stopped", err=err)


@click.command("console")
@chain_options
@account_options
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port (0: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_HOME / "console",
    show_default=True,
    help="Where the console keeps its index of the chain's events (one SQLite file per deployment).",
)
def console(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    port: int,
    host: str,
    data_dir: Path,
) -> None:
    """The web console: open jobs, providers, prices, jobs and accounts of a market, read from the chain.

    With --account/--dev (the requester's key) a job's page also shows its log lines from the worker.
    """
    contracts = open_contracts(rpc_url, deployment_path)
    requester = None
    if account_address is not None or dev_index is not None:
        requester = load_signer(account_address, dev_index, password_file)
    serve_console(
        contracts, port=port, host=host, deployment=str(deployment_path), data_dir=data_dir, requester=requester
    )
