"""Merkle roots and proofs over result chunks."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest
from eth_hash.auto import keccak
from hypothesis import given
from hypothesis import strategies as st

from marketplace.protocol.merkle import (
    CHUNK_SIZE,
    EMPTY_ROOT,
    chunk_leaf,
    manifest_of,
    merkle_root,
    node_hash,
    proof_for,
    verify_proof,
)


def test_empty_result_set__has_the_keccak_of_nothing_as_root(tmp_path: Path) -> None:
    manifest, leaves = manifest_of(tmp_path)
    assert manifest.root == EMPTY_ROOT == keccak(b"")
    assert leaves == []


def test_single_leaf__is_its_own_root() -> None:
    leaf = chunk_leaf("a", 0, b"x")
    assert merkle_root([leaf]) == leaf
    assert proof_for([leaf], 0) == []
    assert verify_proof([], leaf, leaf)


def test_leaf__follows_the_documented_layout() -> None:
    expected = keccak(b"\x00" + keccak(b"out/model.bin") + (3).to_bytes(8, "big") + blake3.blake3(b"data").digest())
    assert chunk_leaf("out/model.bin", 3, b"data") == expected


def test_internal_nodes__hash_the_sorted_pair_like_openzeppelin() -> None:
    a, b = keccak(b"a"), keccak(b"b")
    assert node_hash(a, b) == node_hash(b, a) == keccak(min(a, b) + max(a, b))


@given(st.lists(st.binary(min_size=1, max_size=8), min_size=1, max_size=40), st.data())
def test_every_leaf__has_a_proof_that_verifies(chunks: list[bytes], data: st.DataObject) -> None:
    leaves = [chunk_leaf("f", i, c) for i, c in enumerate(chunks)]
    root = merkle_root(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1))
    assert verify_proof(proof_for(leaves, index), root, leaves[index])


def test_a_changed_chunk__fails_its_proof() -> None:
    leaves = [chunk_leaf("f", i, bytes([i])) for i in range(7)]
    root = merkle_root(leaves)
    forged = chunk_leaf("f", 2, b"forged")
    assert not verify_proof(proof_for(leaves, 2), root, forged)


def test_manifest__chunks_files_in_sorted_order_and_counts_empty_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "big.bin").write_bytes(b"\x01" * (CHUNK_SIZE + 5))
    (tmp_path / "a.txt").write_bytes(b"hello")
    (tmp_path / "empty").write_bytes(b"")
    manifest, leaves = manifest_of(tmp_path)
    assert [f.path for f in manifest.files] == ["a.txt", "b/big.bin", "empty"]
    assert [f.chunks for f in manifest.files] == [1, 2, 1]
    assert leaves[1] == chunk_leaf("b/big.bin", 0, b"\x01" * CHUNK_SIZE)
    assert leaves[3] == chunk_leaf("empty", 0, b"")
    assert manifest.root == merkle_root(leaves)
    assert manifest.total_bytes == 5 + CHUNK_SIZE + 5


def test_symlinks__are_not_part_of_a_result(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"r")
    (tmp_path / "link").symlink_to("/etc/hostname")
    manifest, _ = manifest_of(tmp_path)
    assert [f.path for f in manifest.files] == ["real"]


def test_proof_for_a_missing_leaf__raises() -> None:
    with pytest.raises(IndexError):
        proof_for([keccak(b"a")], 1)
