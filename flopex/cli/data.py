"""``flopex data``: datasets by hash on a provider's worker.

``put`` uploads a directory once (resuming an interrupted upload; the worker recomputes the hash
and refuses a mismatch) and prints its name, ``data:<hex>``, for ``job.toml``'s
``[job] datasets``; ``hash`` prints the name without uploading; ``has`` and ``ls`` ask the
worker; ``from-job`` keeps a finished job's output folder on its worker as a dataset, so the next
job reads it by hash without any upload. Requests are signed by your account (``--dev N`` or
``--account``); every command takes ``--json``. See docs/datasets.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flopex.cli.common import DEFAULT_HOME, account_options, emit_json, fail, load_signer

__all__ = ["data"]

data: click.Group = click.Group("data", help="Datasets by hash: put once on a provider, read by many jobs.")


def _provider(fn: Any) -> Any:
    return click.option(
        "--provider",
        "endpoint",
        required=True,
        help="The worker's endpoint (host:port, or host:port#tls-spki=<hex> as its offer registers it).",
    )(fn)


def _data_dir(fn: Any) -> Any:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help=f"Where put datasets are remembered [default: {DEFAULT_HOME}/requester-ADDRESS].",
    )(fn)


def _client(endpoint: str, account_address: str | None, dev_index: int | None, password_file: Path | None) -> Any:
    from marketplace.requester.datasets import open_provider

    signer = load_signer(account_address, dev_index, password_file)
    return signer, open_provider(endpoint, signer.key)


def _hash_arg(text: str) -> bytes:
    from marketplace.protocol.datasets import parse_dataset

    return parse_dataset(text, "HASH")


@data.command("put")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_provider
@account_options
@_data_dir
@click.option("--json", "as_json", is_flag=True)
def data_put(
    directory: Path,
    endpoint: str,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Upload DIRECTORY to the provider once and print its name (data:<hex>)."""
    from marketplace.requester.datasets import DatasetIndex, put_dataset

    signer, client = _client(endpoint, account_address, dev_index, password_file)
    with client:
        result = put_dataset(client, directory)
    DatasetIndex(data_dir or DEFAULT_HOME / f"requester-{signer.address}").remember(result.hash, directory)
    if as_json:
        emit_json({**result.to_json(), "provider": endpoint, "directory": str(directory.resolve())})
        return
    if result.already_held:
        click.echo(f"{result.name}  (the provider holds it already; nothing uploaded)")
    else:
        click.echo(f"{result.name}  ({result.files} files, {result.size_bytes} bytes; {result.bytes_sent} sent)")


@data.command("hash")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def data_hash(directory: Path, as_json: bool) -> None:
    """Print the name DIRECTORY would have (data:<hex>), uploading nothing."""
    from marketplace.protocol.datasets import dataset_hash, format_dataset

    name = format_dataset(dataset_hash(directory))
    if as_json:
        emit_json({"dataset": name, "directory": str(directory.resolve())})
    else:
        click.echo(name)


@data.command("has")
@click.argument("name")
@_provider
@account_options
@click.option("--json", "as_json", is_flag=True)
def data_has(
    name: str,
    endpoint: str,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    as_json: bool,
) -> None:
    """Say whether the provider holds dataset NAME (exit 1 when it does not)."""
    from marketplace.protocol.datasets import format_dataset
    from marketplace.requester.datasets import query_dataset

    digest = _hash_arg(name)
    _signer, client = _client(endpoint, account_address, dev_index, password_file)
    with client:
        status = query_dataset(client, digest)
    if as_json:
        emit_json(
            {
                "dataset": format_dataset(digest),
                "present": status.present,
                "size_bytes": status.size_bytes,
                "files": status.files,
            }
        )
    elif status.present:
        click.echo(f"{format_dataset(digest)}: held ({status.files} files, {status.size_bytes} bytes)")
    if not status.present:
        fail(f"{format_dataset(digest)} is not on {endpoint}; put it with: flopex data put DIR --provider {endpoint}")


@data.command("ls")
@_provider
@account_options
@click.option("--json", "as_json", is_flag=True)
def data_ls(
    endpoint: str, account_address: str | None, dev_index: int | None, password_file: Path | None, as_json: bool
) -> None:
    """List your datasets on the provider and your quota there."""
    from marketplace.protocol.datasets import format_dataset
    from marketplace.requester.datasets import list_datasets

    _signer, client = _client(endpoint, account_address, dev_index, password_file)
    with client:
        listed = list_datasets(client)
    rows = [
        {
            "dataset": format_dataset(bytes(d.dataset_hash)),
            "size_bytes": d.size_bytes,
            "files": d.files,
            "last_used": d.last_used,
            "pinned": d.pinned,
        }
        for d in listed.datasets
    ]
    if as_json:
        emit_json({"datasets": rows, "quota_used_bytes": listed.quota_used_bytes, "quota_bytes": listed.quota_bytes})
        return
    for row in rows:
        pin = "  pinned by a live job" if row["pinned"] else ""
        click.echo(f"{row['dataset']}  {row['files']} files, {row['size_bytes']} bytes{pin}")
    click.echo(f"quota: {listed.quota_used_bytes} of {listed.quota_bytes} bytes in use")


@data.command("from-job")
@click.argument("job_id", type=click.IntRange(1))
@_provider
@account_options
@click.option("--json", "as_json", is_flag=True)
def data_from_job(
    job_id: int,
    endpoint: str,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    as_json: bool,
) -> None:
    """Keep succeeded job JOB_ID's output folder on its worker as a dataset; print its name."""
    from marketplace.protocol.datasets import format_dataset
    from marketplace.requester.datasets import dataset_from_job

    _signer, client = _client(endpoint, account_address, dev_index, password_file)
    with client:
        digest = dataset_from_job(client, job_id)
    if as_json:
        emit_json({"dataset": format_dataset(digest), "job_id": job_id, "provider": endpoint})
    else:
        click.echo(format_dataset(digest))
