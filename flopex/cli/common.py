"""What every ``flopex`` command shares: the home folder, one-line errors, JSON output, chain and
account options, and loading contracts and signers from them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

import click

from marketplace.errors import FlopexError

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "DEFAULT_HOME",
    "FlopexGroup",
    "account_options",
    "chain_options",
    "emit_json",
    "environment_options",
    "environment_settings",
    "fail",
    "hold_data_dir",
    "load_signer",
    "open_contracts",
    "worker_options",
]


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
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", code=130)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def emit_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def worker_options(fn: Any) -> Any:
    """--cpu-slots, --unsafe-no-sandbox and --memory-limit-mb, for every command that runs a worker."""
    fn = click.option("--memory-limit-mb", type=click.IntRange(64), default=4096, show_default=True)(fn)
    fn = click.option(
        "--unsafe-no-sandbox", is_flag=True, help="Run jobs without bubblewrap (only for code you trust)."
    )(fn)
    fn = click.option(
        "--cpu-slots",
        type=click.IntRange(1, 256),
        default=1,
        show_default=True,
        help="CPU devices to offer when there is no GPU.",
    )(fn)
    return fn


def environment_options(fn: Any) -> Any:
    """--package-index, --find-links and --env-cache-gb: where declared environments' packages come from."""
    fn = click.option(
        "--env-cache-gb",
        type=click.FloatRange(0.1),
        default=20.0,
        show_default=True,
        help="Disk kept for built environments; the least recently used are removed beyond it.",
    )(fn)
    fn = click.option(
        "--find-links",
        "find_links",
        multiple=True,
        type=click.Path(file_okay=False, exists=True, path_type=Path),
        help="A local folder of wheels for declared environments (repeatable; readable by all users).",
    )(fn)
    fn = click.option(
        "--package-index",
        default="https://pypi.org/simple",
        show_default=True,
        help="The package index environment builds may reach ('none': no network, only --find-links).",
    )(fn)
    return fn


def environment_settings(data_dir: Path, package_index: str, find_links: tuple[Path, ...], env_cache_gb: float) -> Any:
    """The :class:`~worker.node.environments.EnvironmentSettings` of the options above."""
    from worker.node.environments import EnvironmentSettings

    index = None if package_index.strip().lower() in ("", "none") else package_index.strip()
    return EnvironmentSettings(
        data_dir / "environments",
        package_index=index,
        find_links=tuple(p.resolve() for p in find_links),
        max_cache_bytes=int(env_cache_gb * (1 << 30)),
    )


def serve_options(fn: Any) -> Any:
    """--host, --port, --advertise, --tls-cert, --tls-key and --plaintext: how a worker serves strangers.

    TLS is the default: the certificate's key is pinned in the endpoint the offer names, so clients
    need no certificate authority; plaintext only on loopback, and only when asked for.
    """
    fn = click.option("--plaintext", is_flag=True, help="Serve without TLS (loopback addresses only).")(fn)
    fn = click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)(fn)
    fn = click.option(
        "--tls-cert",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="PEM certificate [default: self-signed, made in the data folder on first start].",
    )(fn)
    fn = click.option(
        "--advertise",
        "advertise_host",
        default=None,
        help="Host the offer names [default: --host; needed for 0.0.0.0].",
    )(fn)
    fn = click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="Port (0: any).")(fn)
    fn = click.option("--host", default="127.0.0.1", show_default=True, help="Address the worker binds.")(fn)
    return fn


def chain_options(fn: Any) -> Any:
    """--rpc-url and --deployment, for every command that talks to a chain."""
    fn = click.option(
        "--deployment",
        "deployment_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_DEPLOYMENT,
        show_default=True,
        help="Deployment file (written by `flopex chain up` or `flopex deploy`).",
    )(fn)
    fn = click.option(
        "--rpc-url", default=None, help="JSON-RPC URL of the chain [default: the one in the deployment file]."
    )(fn)
    return fn


def account_options(fn: Any) -> Any:
    """--account/--dev and the password sources, for commands that sign."""
    fn = click.option(
        "--password-file",
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        help="File whose first line is the keystore password.",
    )(fn)
    fn = click.option(
        "--dev",
        "dev_index",
        type=click.IntRange(0, 1000),
        default=None,
        help="Use dev account N (dev chains only; its key is public).",
    )(fn)
    fn = click.option(
        "--account",
        "account_address",
        default=None,
        help="Address of a key in the keystore (see `flopex account list`).",
    )(fn)
    return fn


def open_contracts(rpc_url: str | None, deployment_path: Path) -> Any:
    from marketplace.chain.client import Chain
    from marketplace.contracts.deployment import Deployment, load_contracts

    deployment = Deployment.load(deployment_path)
    url = rpc_url or deployment.rpc_url
    if url is None:
        from marketplace.errors import ConfigError

        raise ConfigError(f"{deployment_path} names no chain; give --rpc-url")
    return load_contracts(Chain.connect(url), deployment)


def load_signer(account_address: str | None, dev_index: int | None, password_file: Path | None) -> Any:
    from marketplace.chain.accounts import Keystore, read_password
    from marketplace.chain.client import dev_account
    from marketplace.errors import ConfigError

    if dev_index is not None:
        if account_address is not None:
            raise ConfigError("give --account or --dev, not both")
        return dev_account(dev_index)
    if account_address is None:
        raise ConfigError("no account: give --account ADDRESS (a keystore key) or --dev N on a dev chain")
    password = read_password(password_file)
    if password is None:
        password = click.prompt(f"password for {account_address}", hide_input=True)
    return Keystore(DEFAULT_HOME / "keystore").unlock(account_address, password)


#: Locks held on daemons' data folders, kept open (and so held) until the process exits.
_HELD: list[IO[str]] = []


def hold_data_dir(data_dir: Path, role: str) -> Path:
    """Create ``data_dir`` and lock it for this process, or refuse when another live daemon holds it.

    The lock is an exclusive ``flock`` on ``data_dir/daemon.lock`` (its text: the holder's pid and
    role), held until this process exits; the kernel lets it go when the holder dies, so a crash
    leaves nothing to clean up. Raises :class:`ConfigError` naming the holder when it is taken.
    """
    import fcntl

    from marketplace.errors import ConfigError

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = (data_dir / "daemon.lock").open("a+")
    except OSError as exc:
        raise ConfigError(f"cannot use {data_dir} as a data folder: {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{data_dir} is in use by a running daemon ({holder}); give this {role} a --data-dir of its own"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{role} pid {os.getpid()}")
    handle.flush()
    _HELD.append(handle)
    return data_dir
