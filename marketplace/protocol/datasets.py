"""Datasets by hash: their names, their hash, their archive and what a request for one signs.

A dataset is a directory of regular files uploaded once to a provider (``flopex data put``) and
named by its content: ``data:<64 hex>``, where the hex is the Merkle root of
:mod:`marketplace.protocol.merkle` over its files (the same tree hash a job's results are
committed with: 1 MiB chunks, leaves naming each file's relative path). A job names the datasets
it reads in ``job.toml``::

    [job]
    datasets = { train = "data:3f0c…" }

and finds each read-only at ``/job/data/<name>`` (``{data_dir}/<name>`` in ``job.args``,
``FLOPEX_DATA_DIR`` in its environment). Anyone holding the same files computes the same name,
so a provider, a verifier and a requester check each other's copies by recomputing it.

On the wire a dataset travels as the canonical ``.tar.gz`` bundles use
(:func:`marketplace.protocol.bundle.pack_tree`), resumable by byte offset; the worker unpacks it
with the same bounds and recomputes the name before keeping it.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tomllib
from pathlib import Path

from marketplace.errors import BundleError
from marketplace.protocol.bundle import (
    DATASET_NAME,
    DATASET_PREFIX,
    MAX_DATASETS,
    MAX_JOB_TOML_BYTES,
    pack_tree,
    parse_dataset,
    parse_datasets_table,
    regular_files,
)
from marketplace.protocol.merkle import manifest_of

__all__ = [
    "DATASET_NAME",
    "DATASET_PREFIX",
    "MAX_DATASETS",
    "dataset_hash",
    "dataset_request_digest",
    "datasets_of_archive",
    "format_dataset",
    "pack_dataset",
    "parse_dataset",
    "parse_datasets_table",
]

_DIGEST_DOMAIN = b"flopex-dataset-v1\0"


def format_dataset(root: bytes) -> str:
    """``data:<hex>`` for a 32-byte Merkle root."""
    if len(root) != 32:
        raise ValueError("a dataset hash is 32 bytes")
    return DATASET_PREFIX + root.hex()


def dataset_hash(directory: str | os.PathLike[str]) -> bytes:
    """The 32-byte Merkle root naming the dataset in ``directory``.

    The directory is checked as a bundle is (no links or special files, names within the archive
    bounds, UTF-8 names) and must hold at least one file.
    """
    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"dataset: not a directory: {root}")
    if not regular_files(root):
        raise BundleError(f"dataset: {root} holds no files")
    return manifest_of(root)[0].root


def pack_dataset(directory: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(hash, canonical ``.tar.gz``) of the dataset in ``directory``.

    Compressed at level 1: datasets are mostly binary or already compressed, and level 6 runs at
    about 25 MiB/s, slower than the network it would save.
    """
    root_hash = dataset_hash(directory)
    return root_hash, pack_tree(directory, compresslevel=1)


def dataset_request_digest(dataset: bytes, archive_sha256: bytes = b"\0" * 32) -> bytes:
    """The payload digest a ``PutDataset``/``QueryDataset`` request signs: it binds the name and the archive."""
    if len(dataset) != 32 or len(archive_sha256) != 32:
        raise ValueError("dataset digests bind a 32-byte hash and a 32-byte archive sha256")
    return hashlib.sha256(_DIGEST_DOMAIN + dataset + archive_sha256).digest()


def datasets_of_archive(archive: bytes) -> tuple[tuple[str, bytes], ...]:
    """The ``job.datasets`` of a bundle archive (read from its ``job.toml``); () when it names none."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            try:
                member = tar.getmember("job.toml")
            except KeyError:
                return ()
            if not member.isreg() or member.size > MAX_JOB_TOML_BYTES:
                return ()
            fh = tar.extractfile(member)
            text = fh.read().decode("utf-8") if fh is not None else ""
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError):
        return ()
    try:
        job = tomllib.loads(text).get("job", {})
    except tomllib.TOMLDecodeError:
        return ()
    return parse_datasets_table(job.get("datasets", {})) if isinstance(job, dict) else ()
