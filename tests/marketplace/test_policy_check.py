"""What a policy can judge of a job, said at submit: Freivalds without a matrix-product claim is refused
in one line, replay without SDK checkpoints runs as a stated full re-run on the declared outputs."""

from __future__ import annotations

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from flopex.cli.main import cli
from marketplace.chain.client import Chain
from marketplace.chain.jsonrpc_server import JsonRpcChainServer
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import ConfigError
from marketplace.protocol.bundle import load_bundle
from marketplace.requester.preflight import policy_check, saves_sdk_checkpoints
from marketplace.types import Policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _copy(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(EXAMPLES / name, target)
    return target


def _matmul(tmp_path: Path, tensors: dict[str, torch.Tensor] | None) -> Path:
    root = _copy(tmp_path, "matmul")
    if tensors is not None:
        save_file(tensors, str(root / "inputs.safetensors"))
    else:
        (root / "inputs.safetensors").write_bytes(b"not safetensors")
    return root


def test_replay__sdk_checkpoints_give_segment_replay() -> None:
    bundle = load_bundle(EXAMPLES / "replay_mlp")
    assert saves_sdk_checkpoints(bundle)
    check = policy_check(bundle, Policy.REPLAY)
    assert check.method == "segments" and not check.degraded


def test_replay__no_sdk_checkpoints__degrades_to_a_stated_full_rerun_on_the_declared_outputs(tmp_path: Path) -> None:
    bundle = load_bundle(EXAMPLES / "multi_step")
    assert not saves_sdk_checkpoints(bundle)
    check = policy_check(bundle, Policy.REPLAY)
    assert check.method == "full-rerun" and check.degraded
    assert check.compares == ("model.safetensors", "work/data.safetensors")
    assert (
        "saves no SDK checkpoints" in check.line and "compares model.safetensors, work/data.safetensors" in check.line
    )
    assert "never" not in check.line and "voids the slot" in check.line and "\n" not in check.line
    # Nothing declared: every output file is compared, and the line says how to declare the answer.
    root = _copy(tmp_path, "multi_step")
    toml = root / "job.toml"
    toml.write_text(toml.read_text().replace('outputs = ["model.safetensors", "work/data.safetensors"]\n', ""))
    undeclared = policy_check(load_bundle(root), Policy.REPLAY)
    assert undeclared.compares == ("every output file",) and "[verification] outputs" in undeclared.line


def test_a_mention_of_checkpoint_is_not_an_sdk_checkpoint(tmp_path: Path) -> None:
    root = _copy(tmp_path, "multi_step")
    (root / "helper.py").write_text("import torch\ntorch.save({}, 'checkpoint.pt')  # a checkpoint of our own\n")
    assert not saves_sdk_checkpoints(load_bundle(root))
    (root / "helper.py").write_text("from marketplace.sdk import checkpoint, seed\ncheckpoint({}, 1)\n")
    assert saves_sdk_checkpoints(load_bundle(root))


def test_freivalds__a_matrix_product_claim_is_accepted(tmp_path: Path) -> None:
    bundle = load_bundle(_matmul(tmp_path, {"a": torch.ones(4, 3), "b": torch.ones(3, 5)}))
    assert policy_check(bundle, Policy.FREIVALDS).method == "freivalds"


@pytest.mark.parametrize(
    ("tensors", "why"),
    [
        ({"a": torch.ones(4, 3), "b": torch.ones(4, 5)}, "are not matrices that multiply"),
        ({"x": torch.ones(4, 3)}, "holds no tensors named a and b"),
        ({"a": torch.ones(4, 3, dtype=torch.int64), "b": torch.ones(3, 5, dtype=torch.int64)}, "not floating-point"),
        (None, "is not a readable safetensors file"),
    ],
)
def test_freivalds__no_matrix_product_claim__is_refused_in_one_line(
    tmp_path: Path, tensors: dict[str, torch.Tensor] | None, why: str
) -> None:
    with pytest.raises(ConfigError) as err:
        policy_check(load_bundle(_matmul(tmp_path, tensors)), Policy.FREIVALDS)
    message = str(err.value)
    assert message.startswith("freivalds: the job makes no matrix-product claim") and why in message
    assert "\n" not in message


def test_freivalds__a_training_job_or_steps__are_refused() -> None:
    for name, why in (("replay_mlp", "no job.inputs .safetensors file"), ("multi_step", "not commands or steps")):
        with pytest.raises(ConfigError, match=why):
            policy_check(load_bundle(EXAMPLES / name), Policy.FREIVALDS)


def test_job_submit__refuses_freivalds_before_posting_and_states_a_weaker_replay(tmp_path: Path) -> None:
    contracts = setup_dev_market(Chain.embedded(), accounts=4)
    chain = contracts.chain
    server = JsonRpcChainServer(chain.w3.provider, chain._tester, port=0)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        deployment = tmp_path / "deployment.json"
        replace(contracts.deployment, rpc_url=f"http://127.0.0.1:{server.port}").save(deployment)
        bundle = str(EXAMPLES / "multi_step")
        submit = ["job", "submit", bundle, "--dev", "2", "--deployment", str(deployment)]
        before = contracts.market.job_count()
        refused = CliRunner().invoke(cli, [*submit, "--verify", "freivalds"])
        assert refused.exit_code == 1
        assert refused.output.startswith("error: freivalds: the job makes no matrix-product claim")
        assert refused.output.count("\n") == 1
        assert contracts.market.job_count() == before  # nothing posted, no money moved

        result = CliRunner().invoke(cli, [*submit, "--json"])
        assert result.exit_code == 0, result.output
        check = json.loads(result.stdout)["preflight"]["check"]
        assert check["method"] == "full-rerun" and check["degraded"] is True
        assert check["compares"] == ["model.safetensors", "work/data.safetensors"]
        assert any(
            line.startswith("note: replay: the job saves no SDK checkpoints") for line in result.stderr.splitlines()
        )
    finally:
        server.shutdown()
