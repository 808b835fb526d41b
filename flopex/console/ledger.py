"""The console's index of a market: every log of its contracts since deployment, synced incrementally.

:class:`Ledger` reads the logs of the market, the registry, the reservations contract and any
pool it was told about with one ``eth_getLogs`` per sync over the blocks it has not seen, decodes
them with the contracts' ABIs, and keeps them in memory and in a small SQLite file (one per
deployment, in the console's data folder), with the timestamps of their blocks and the offers
providers had registered at past blocks. A console that starts again reads the file and asks the
node only for the blocks after it. The file is only a cache: when the block it was synced to has
another hash on the chain now (a fresh dev chain, a re-org), it is dropped and rebuilt.

Nothing here is trusted beyond the chain: every row is a decoded log, and the pages compute their
figures from these logs with the library (:mod:`marketplace.market.index`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from web3._utils.events import get_event_data

from marketplace.contracts import events as ev
from marketplace.contracts.base import Bound
from marketplace.contracts.deployment import Contracts
from marketplace.market.index import History, assemble_history, offer_at_block
from marketplace.types import JobSpec, JobStatus

__all__ = ["JobRow", "Ledger", "Log"]

SCHEMA = 1
#: Blocks asked for in one eth_getLogs.
CHUNK = 5_000


@dataclass(frozen=True)
class Log:
    """One decoded log of a flopex contract and where it happened."""

    source: str  # "market", "registry", "reservations" or "pool"
    address: str
    name: str
    args: dict[str, Any]
    block: int
    log_index: int
    tx_hash: str
    time: int

    def event(self) -> ev.ChainEvent | None:
        """The dataclass of :mod:`marketplace.contracts.events` for a market or registry log (None for others)."""
        if self.source not in ("market", "registry"):
            return None
        return ev.decode(
            {
                "event": self.name,
                "args": self.args,
                "blockNumber": self.block,
                "transactionHash": self.tx_hash,
                "logIndex": self.log_index,
            }
        )


@dataclass
class JobRow:
    """A job as its market events tell it: terms, escrow, status, and every log that names it."""

    job_id: int
    spec: JobSpec
    escrow: int
    status: JobStatus
    posted: Log
    logs: list[Log] = field(default_factory=list)


_STATUS_AFTER = {
    "JobLeased": JobStatus.LEASED,
    "JobExpired": JobStatus.EXPIRED,
    "JobCancelled": JobStatus.CANCELLED,
    "JobClosed": JobStatus.CLOSED,
}


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$b": bytes(value).hex()}
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$b"}:
            return bytes.fromhex(value["$b"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


class Ledger:
    """Every log of one deployment's contracts, synced incrementally, in memory and in SQLite."""

    def __init__(self, contracts: Contracts, path: Path | None = None) -> None:
        self.contracts = contracts
        self.chain = contracts.chain
        self.start_block = contracts.deployment.start_block
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._lock = threading.RLock()
        self._sources: dict[str, tuple[str, Bound]] = {}
        self._events: dict[tuple[str, bytes], Any] = {}
        self.synced = self.start_block - 1
        self.logs: list[Log] = []
        self.by_name: dict[str, list[Log]] = {}
        self.jobs: dict[int, JobRow] = {}
        self.times: dict[int, int] = {}
        self._offers: dict[tuple[str, int], tuple[str, int | None]] = {}
        #: Addresses named by a registry log since the caller last took them (their views changed).
        self.touched: set[str] = set()
        self._listeners: list[Callable[[Log], None]] = []
        self._history: tuple[int, History] | None = None
        self._watch("market", contracts.market)
        self._watch("registry", contracts.registry)
        if contracts.reservations is not None:
            self._watch("reservations", contracts.reservations)
        self._create()
        self._load()

    # ------------------------------------------------------------------ sources

    def _watch(self, source: str, bound: Bound) -> None:
        self._sources[bound.address] = (source, bound)
        for abi in bound.contract.abi:
            if abi.get("type") == "event":
                self._events[(bound.address, event_abi_to_log_topic(cast(Any, abi)))] = abi

    def watch_pool(self, pool: Bound) -> None:
        """Index a pool's logs too (read back from the deployment's first block the first time)."""
        with self._lock:
            if pool.address in self._sources:
                return
            self._watch("pool", pool)
            known = self._db.execute("SELECT 1 FROM sources WHERE address = ?", (pool.address,)).fetchone()
            if known is None and self.synced >= self.start_block:
                self._ingest(self._fetch([pool.address], self.start_block, self.synced))
            self._db.execute("INSERT OR IGNORE INTO sources VALUES (?)", (pool.address,))
            self._db.commit()

    @property
    def pools(self) -> list[str]:
        """Pool addresses this ledger indexes."""
        return [a for a, (source, _b) in self._sources.items() if source == "pool"]

    # ------------------------------------------------------------------ storage

    def _create(self) -> None:
        with self._lock:
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
                CREATE TABLE IF NOT EXISTS logs (
                    block INTEGER, log_index INTEGER, address TEXT, name TEXT, tx_hash TEXT, args TEXT,
                    PRIMARY KEY (block, log_index));
                CREATE TABLE IF NOT EXISTS blocks (number INTEGER PRIMARY KEY, time INTEGER);
                CREATE TABLE IF NOT EXISTS offers (provider TEXT, block INTEGER, model TEXT, kind INTEGER,
                    PRIMARY KEY (provider, block));
                CREATE TABLE IF NOT EXISTS sources (address TEXT PRIMARY KEY);
                """
            )

    def _meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _identity(self) -> dict[str, str]:
        d = self.contracts.deployment
        return {"schema": str(SCHEMA), "chain_id": str(d.chain_id), "market": d.market, "start": str(d.start_block)}

    def _reset(self) -> None:
        for table in ("meta", "logs", "blocks", "offers", "sources"):
            self._db.execute(f"DELETE FROM {table}")  # fixed table names
        self._db.executemany("INSERT INTO meta VALUES (?, ?)", self._identity().items())
        self._db.commit()

    def _load(self) -> None:
        """Read what the file holds, if it is this deployment's and the chain still has its last block."""
        with self._lock:
            meta = self._meta()
            if any(meta.get(k) != v for k, v in self._identity().items()) or "synced" not in meta:
                self._reset()
                return
            synced = int(meta["synced"])
            if synced > self.chain.block_number() or self._hash(synced) != meta.get("synced_hash"):
                self._reset()  # another chain at the same addresses, or a re-org: start over
                return
            for (address,) in self._db.execute("SELECT address FROM sources").fetchall():
                from marketplace.contracts.pool import Pool

                self._watch("pool", Pool(self.chain, address, self.contracts.market))
            self.times.update(self._db.execute("SELECT number, time FROM blocks").fetchall())
            for provider, block, model, kind in self._db.execute("SELECT * FROM offers").fetchall():
                self._offers[(provider, block)] = (model, kind)
            rows = self._db.execute(
                "SELECT block, log_index, address, name, tx_hash, args FROM logs ORDER BY block, log_index"
            ).fetchall()
            logs = []
            for block, log_index, address, name, tx_hash, args in rows:
                source = self._sources.get(address, ("pool", None))[0]
                logs.append(
                    Log(source, address, name, _decode(json.loads(args)), block, log_index, tx_hash, self.times[block])
                )
            self.synced = synced
            self._apply(logs)
            self.touched.clear()

    def _hash(self, block: int) -> str:
        with self.chain.locked():
            return bytes(self.chain.w3.eth.get_block(block)["hash"]).hex()

    # ------------------------------------------------------------------ syncing

    def sync(self) -> int:
        """Read the logs of the blocks not seen yet; returns the latest block."""
        with self._lock:
            latest = self.chain.block_number()
            if latest <= self.synced:
                return self.synced
            if self.synced >= self.start_block and self._hash(self.synced) != self._meta().get("synced_hash"):
                self._reset()  # the chain changed under us
                self._forget()
            first = max(self.synced + 1, self.start_block)
            self._ingest(self._fetch(list(self._sources), first, latest))
            self.synced = latest
            self._db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [("synced", str(latest)), ("synced_hash", self._hash(latest))],
            )
            self._db.commit()
            return latest

    def _forget(self) -> None:
        self.synced = self.start_block - 1
        self.logs, self.by_name, self.jobs, self.times, self._offers = [], {}, {}, {}, {}
        self._history = None

    def _fetch(self, addresses: list[str], first: int, last: int) -> list[Log]:
        found: list[Log] = []
        for a in range(first, last + 1, CHUNK):
            b = min(last, a + CHUNK - 1)
            raw = self.chain.logs(addresses, a, b)
            for log in raw:
                address = to_checksum_address(log["address"])
                abi = self._events.get((address, bytes(log["topics"][0]))) if log["topics"] else None
                if abi is None:
                    continue
                data = get_event_data(self.chain.w3.codec, abi, log)
                block = int(log["blockNumber"])
                tx = log["transactionHash"]
                found.append(
                    Log(
                        self._sources[address][0],
                        address,
                        str(data["event"]),
                        {k: _decode(_encode(v)) for k, v in dict(data["args"]).items()},
                        block,
                        int(log["logIndex"]),
                        tx.to_0x_hex() if hasattr(tx, "to_0x_hex") else str(tx),
                        self.time_of(block),
                    )
                )
        return sorted(found, key=lambda item: (item.block, item.log_index))

    def _ingest(self, logs: list[Log]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO logs VALUES (?, ?, ?, ?, ?, ?)",
            [(g.block, g.log_index, g.address, g.name, g.tx_hash, json.dumps(_encode(g.args))) for g in logs],
        )
        self._apply(logs)

    def _apply(self, logs: Iterable[Log]) -> None:
        for log in logs:
            self.logs.append(log)
            self.by_name.setdefault(log.name, []).append(log)
            if log.source == "registry":
                for value in log.args.values():
                    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
                        self.touched.add(to_checksum_address(value))
            if log.source == "market" and "job_id" in log.args:
                job_id = int(log.args["job_id"])
                if log.name == "JobPosted":
                    spec = JobSpec.from_abi(log.args["spec"])
                    self.jobs[job_id] = JobRow(job_id, spec, int(log.args["escrow"]), JobStatus.OPEN, log)
                row = self.jobs.get(job_id)
                if row is not None:
                    row.logs.append(log)
                    row.status = _STATUS_AFTER.get(log.name, row.status)
            for listener in self._listeners:
                listener(log)

    # ------------------------------------------------------------------ reading

    def named(self, *names: str, source: str | None = None) -> list[Log]:
        """Logs with any of ``names`` (of one source if given), in chain order."""
        found = [g for n in names for g in self.by_name.get(n, ()) if source is None or g.source == source]
        return sorted(found, key=lambda g: (g.block, g.log_index)) if len(names) > 1 else found

    def events(self, name: str) -> list[Any]:
        """The market's or registry's logs ``name`` as :mod:`marketplace.contracts.events` dataclasses."""
        return [e for e in (g.event() for g in self.by_name.get(name, ())) if e is not None]

    def time_of(self, block: int) -> int:
        """A block's timestamp (read once, then kept)."""
        if block not in self.times:
            with self.chain.locked():
                self.times[block] = int(self.chain.w3.eth.get_block(block)["timestamp"])
            self._db.execute("INSERT OR REPLACE INTO blocks VALUES (?, ?)", (block, self.times[block]))
        return self.times[block]

    def offer_at(self, provider: str, block: int) -> tuple[str, int | None]:
        """``provider``'s (model, kind) as registered at ``block`` (read once, then kept)."""
        key = (provider, block)
        if key not in self._offers:
            self._offers[key] = offer_at_block(self.contracts, provider, block)
            model, kind = self._offers[key]
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO offers VALUES (?, ?, ?, ?)", (provider, block, model, kind))
                self._db.commit()
        return self._offers[key]

    def history(self) -> History:
        """The price index's history as of the latest synced block, from these logs (kept until the next block)."""
        with self._lock:
            if self._history is not None and self._history[0] == self.synced:
                return self._history[1]
            reservations = [g for g in self.logs if g.source == "reservations"]
            terms = {int(g.args["reservation_id"]): g.args for g in reservations if g.name == "OfferPosted"}
            sales = [
                (
                    g.block,
                    int(g.args["reservation_id"]),
                    "bought" if g.name == "ReservationBought" else "resold",
                    g.args,
                )
                for g in reservations
                if g.name in ("ReservationBought", "ReservationResold")
            ]
            block = max(self.synced, self.start_block)
            history = assemble_history(
                self.chain.chain_id,
                self.contracts.market.address,
                self.start_block,
                block,
                posted=self.events("JobPosted"),
                leased=self.events("SlotLeased"),
                settled=self.events("SlotSettled"),
                registered=self.events("ProviderRegistered"),
                offer_terms=terms,
                sales=sales,
                time_of=self.time_of,
                offer_at=self.offer_at,
            )
            self._db.commit()
            self._history = (self.synced, history)
            return history

    def close(self) -> None:
        """Close the SQLite file."""
        with self._lock:
            self._db.commit()
            self._db.close()
