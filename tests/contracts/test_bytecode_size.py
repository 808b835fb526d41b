"""Every contract deploys on mainnet-like chains: its runtime bytecode stays under EIP-170's
24,576-byte limit with a margin, so that a fix has room to land without a redesign."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "marketplace" / "contracts" / "artifacts"
EIP170_LIMIT = 24_576
# Room kept free in every contract: the size of a small fix (a check, an event, a branch).
MARGIN = 512


@pytest.mark.parametrize("artifact", sorted(ARTIFACTS.glob("*.json")), ids=lambda p: p.stem)
def test_runtime_bytecode__every_contract__stays_under_eip170_with_the_margin(artifact: Path) -> None:
    runtime = json.loads(artifact.read_text())["bytecode_runtime"]
    size = len(bytes.fromhex(runtime.removeprefix("0x")))
    assert size <= EIP170_LIMIT - MARGIN, f"{artifact.stem}: {size} bytes, limit {EIP170_LIMIT} - margin {MARGIN}"
