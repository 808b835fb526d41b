"""``flopex reserve``: reserved capacity (forward contracts on GPU time) from the command line.

A provider ``offer``s a future window of its devices (and may ``cancel`` it while nobody has
bought it); a requester ``buy``s it into escrow, may ``resell`` it (``buy-resale`` for the next
buyer) before the window starts, and ``run``s its jobs in it during the window, straight on the
provider's worker; ``report`` says it was not served (with the dispute bond). Anyone may
``settle`` a reservation whose challenge period is over; ``withdraw`` pulls what is owed. ``list``
and ``show`` read the chain. Amounts are tokens (``1.5``); every command that prints takes
``--json``. The provider's daemon (``flopex provider start``) records usage and settles by itself.
See docs/reservations.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from flopex.cli.common import account_options, chain_options, emit_json, load_signer, open_contracts
from marketplace.market.summary import reservation_summary

__all__ = ["reservation_summary", "reserve"]


reserve: click.Group = click.Group("reserve", help="Reserved capacity: buy GPU time ahead, resell it, run jobs in it.")


def _tokens(text: str) -> int:
    from marketplace.types import parse_tokens

    return int(parse_tokens(text))


def _describe(s: dict[str, Any]) -> str:
    from marketplace.types import format_tokens

    holder = f"held by {s['holder']}" if s["holder"] else "for sale"
    resale = f", resale at {format_tokens(s['resale_price'])} FLOP" if s["resale_price"] else ""
    return (
        f"reservation {s['reservation_id']}: {s['status']}, {s['gpus']} device(s) of {s['provider']} "
        f"[{s['start']}, {s['end']}) at {format_tokens(s['price'])} FLOP/GPU-h = {format_tokens(s['value'])} "
        f"FLOP, {holder}{resale}; {s['used_gpu_seconds']} GPU-s in {s['usage_records']} record(s)"
    )


def _start_time(text: str, now: int) -> int:
    """``+SECONDS`` from the chain's time now, or an absolute unix time."""
    from marketplace.errors import ConfigError

    try:
        value = int(text.removeprefix("+"))
    except ValueError:
        raise ConfigError(f"--start takes +SECONDS or a unix time, not {text!r}") from None
    return now + value if text.startswith("+") else value


@reserve.command("offer")
@chain_options
@account_options
@click.option("--start", "start_text", required=True, help="When the window opens: +SECONDS from now, or a unix time.")
@click.option("--duration", type=click.IntRange(1), required=True, help="Seconds the window lasts.")
@click.option("--gpus", type=click.IntRange(1, 65535), required=True, help="Devices reserved.")
@click.option("--price", "price_text", required=True, help="Tokens per GPU-hour.")
@click.option("--json", "as_json", is_flag=True)
def reserve_offer(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    start_text: str,
    duration: int,
    gpus: int,
    price_text: str,
    as_json: bool,
) -> None:
    """Offer a future window of your devices (you must be a registered, staked provider)."""
    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    signer = load_signer(account_address, dev_index, password_file)
    now = contracts.chain.next_timestamp()
    rid = reservations.offer(signer, _start_time(start_text, now), duration, gpus, _tokens(price_text))
    summary = reservation_summary(reservations.reservation(rid), now)
    emit_json(summary) if as_json else click.echo(_describe(summary))


@reserve.command("cancel")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@account_options
def reserve_cancel(
    reservation_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
) -> None:
    """Withdraw an offer nobody bought (anyone may, once its window started)."""
    contracts = open_contracts(rpc_url, deployment_path)
    contracts.require_reservations().cancel_offer(
        load_signer(account_address, dev_index, password_file), reservation_id
    )
    click.echo(f"reservation {reservation_id} cancelled")


@reserve.command("list")
@chain_options
@click.option("--provider", "provider_address", default=None, help="Only this provider's offers.")
@click.option("--holder", "holder_address", default=None, help="Only those this account holds now.")
@click.option("--for-sale", is_flag=True, help="Only those that can be bought now (offers and resale listings).")
@click.option("--json", "as_json", is_flag=True)
def reserve_list(
    rpc_url: str | None,
    deployment_path: Path,
    provider_address: str | None,
    holder_address: str | None,
    for_sale: bool,
    as_json: bool,
) -> None:
    """Reservations on chain, oldest first."""
    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    if provider_address:
        ids = reservations.offered_by(provider_address)
    elif holder_address:
        ids = reservations.held_by(holder_address)
    else:
        ids = list(range(1, reservations.offer_count() + 1))
    now = contracts.chain.next_timestamp()
    rows = [reservation_summary(reservations.reservation(i), now) for i in ids]
    if holder_address and provider_address:
        rows = [r for r in rows if r["holder"] and r["holder"].lower() == holder_address.lower()]
    if for_sale:
        rows = [r for r in rows if r["for_sale"]]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(_describe(row))
    if not rows:
        click.echo("no reservations")


@reserve.command("show")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@click.option("--json", "as_json", is_flag=True)
def reserve_show(reservation_id: int, rpc_url: str | None, deployment_path: Path, as_json: bool) -> None:
    """One reservation: terms, holder, usage recorded and escrow."""
    from marketplace.errors import ConfigError

    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    if reservation_id > reservations.offer_count():
        raise ConfigError(f"no reservation {reservation_id} (there are {reservations.offer_count()})")
    summary = reservation_summary(reservations.reservation(reservation_id), contracts.chain.next_timestamp())
    emit_json(summary) if as_json else click.echo(_describe(summary))


@reserve.command("buy")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@account_options
def reserve_buy(
    reservation_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
) -> None:
    """Buy an offered window: its whole price goes into escrow (one transaction, with a permit)."""
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    signer = load_signer(account_address, dev_index, password_file)
    state = reservations.reservation(reservation_id)
    reservations.buy_with_permit(signer, reservation_id, contracts.token, deadline=contracts.chain.now() + 3600)
    click.echo(
        f"reservation {reservation_id} bought: {format_tokens(state.value)} FLOP in escrow; "
        f"run jobs in it from {state.start} to {state.end}"
    )


@reserve.command("resell")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@account_options
@click.option("--price", "price_text", default=None, help="Asking price in tokens (the whole window).")
@click.option("--cancel", "cancel_listing", is_flag=True, help="Take it off the resale market instead.")
def reserve_resell(
    reservation_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    price_text: str | None,
    cancel_listing: bool,
) -> None:
    """List a reservation you hold for resale before its window starts (or --cancel the listing)."""
    from marketplace.errors import ConfigError

    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    signer = load_signer(account_address, dev_index, password_file)
    if cancel_listing:
        reservations.cancel_resale(signer, reservation_id)
        click.echo(f"reservation {reservation_id} is no longer for resale")
        return
    if price_text is None:
        raise ConfigError("give --price (or --cancel)")
    reservations.list_for_resale(signer, reservation_id, _tokens(price_text))
    click.echo(f"reservation {reservation_id} listed for resale at {price_text} FLOP")


@reserve.command("buy-resale")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@account_options
@click.option(
    "--max-price",
    "max_price_text",
    default=None,
    help="Pay at most this many tokens [default: the listing as read now].",
)
def reserve_buy_resale(
    reservation_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    max_price_text: str | None,
) -> None:
    """Buy a reservation listed for resale; you become its holder."""
    from marketplace.errors import ConfigError
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    signer = load_signer(account_address, dev_index, password_file)
    asking = reservations.reservation(reservation_id).resale_price
    if asking == 0:
        raise ConfigError(f"reservation {reservation_id} is not listed for resale")
    limit = _tokens(max_price_text) if max_price_text else asking
    contracts.token.approve(signer, reservations.address, min(asking, limit))
    reservations.buy_resale(signer, reservation_id, limit)
    click.echo(f"reservation {reservation_id} bought on resale for {format_tokens(asking)} FLOP")


@reserve.command("run")
@click.argument("reservation_id", type=click.IntRange(1))
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@chain_options
@account_options
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the results go [default: reserved-ID-SEQ].",
)
@click.option(
    "--seq",
    type=click.IntRange(0, (1 << 24) - 1),
    default=None,
    help="The job's number in the reservation [default: a random one].",
)
@click.option(
    "--record-timeout",
    type=click.FloatRange(0),
    default=120.0,
    show_default=True,
    help="Seconds to wait for the provider's usage record after the results.",
)
@click.option("--json", "as_json", is_flag=True)
def reserve_run(
    reservation_id: int,
    bundle: Path,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    output: Path | None,
    seq: int | None,
    record_timeout: float,
    as_json: bool,
) -> None:
    """Run BUNDLE in a reservation you hold, during its window: no auction, results checked, usage on chain."""
    import secrets

    from marketplace.requester.requester import Requester

    contracts = open_contracts(rpc_url, deployment_path)
    signer = load_signer(account_address, dev_index, password_file)
    requester = Requester(contracts, signer, say=(lambda _line: None) if as_json else click.echo)
    seq = secrets.randbelow(1 << 24) if seq is None else seq
    outcome = requester.run_reserved(
        reservation_id,
        bundle,
        output or Path(f"reserved-{reservation_id}-{seq}"),
        seq=seq,
        record_timeout_s=record_timeout,
    )
    if as_json:
        emit_json(outcome.to_json())
    elif outcome.recorded_gpu_seconds is None:
        click.echo(f"the provider has not recorded the job's usage within {record_timeout:.0f} s")


@reserve.command("report")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@account_options
def reserve_report(
    reservation_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
) -> None:
    """Report, as its holder, that the provider did not serve the reservation (puts up the dispute bond)."""
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    signer = load_signer(account_address, dev_index, password_file)
    bond = reservations.dispute_bond()
    contracts.token.approve(signer, reservations.address, bond)
    reservations.report_not_served(signer, reservation_id)
    click.echo(
        f"reservation {reservation_id} reported not served ({format_tokens(bond)} FLOP bond); "
        "a verifier rules, or it is refunded if nobody does"
    )


@reserve.command("settle")
@click.argument("reservation_id", type=click.IntRange(1))
@chain_options
@account_options
@click.option("--json", "as_json", is_flag=True)
def reserve_settle(
    reservation_id: int,
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
    as_json: bool,
) -> None:
    """Settle a reservation whose challenge period is over (anyone may): pay, refund or slash."""
    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    receipt = reservations.settle(load_signer(account_address, dev_index, password_file), reservation_id)
    settled = next(e for e in reservations.events_of(receipt) if e.name == "ReservationSettled")
    document = {
        "reservation_id": reservation_id,
        "status": reservations.reservation(reservation_id).status.name.lower(),
        **{k: int(settled.args[k]) for k in ("paid", "fee", "refunded", "slashed", "used_gpu_seconds")},
    }
    if as_json:
        emit_json(document)
    else:
        click.echo(
            f"reservation {reservation_id} {document['status']}: paid {document['paid']}, fee "
            f"{document['fee']}, refunded {document['refunded']}, slashed {document['slashed']} units"
        )


@reserve.command("withdraw")
@chain_options
@account_options
def reserve_withdraw(
    rpc_url: str | None,
    deployment_path: Path,
    account_address: str | None,
    dev_index: int | None,
    password_file: Path | None,
) -> None:
    """Withdraw what the reservations contract owes you (pay, refunds, resale proceeds)."""
    from marketplace.types import format_tokens

    contracts = open_contracts(rpc_url, deployment_path)
    reservations = contracts.require_reservations()
    signer = load_signer(account_address, dev_index, password_file)
    if reservations.credits(signer.address) == 0:
        click.echo("nothing to withdraw")
        return
    click.echo(f"withdrew {format_tokens(reservations.withdraw(signer))} FLOP")
