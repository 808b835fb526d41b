"""Train a small MLP on a dataset read by hash, in checkpointed segments (replay-verifiable).

The data is the CSV in the job's ``train`` dataset (``job.datasets`` in job.toml), mounted
read-only; the script never writes there. Each segment is a fixed number of SGD-with-momentum
steps whose mini-batches come from a generator seeded by the job's seed and the segment, and each
checkpoint holds the whole training state, so a verifier can re-run any segment from the
checkpoint before it (it fetches the same dataset from the provider by hash first).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch

from marketplace import sdk

HIDDEN, BATCH = 32, 64


def load_points(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The features and targets of ``points.csv`` in ``folder``."""
    with open(folder / "points.csv", newline="") as fh:
        rows = [[float(v) for v in row] for row in list(csv.reader(fh))[1:]]
    table = torch.tensor(rows, dtype=torch.float32)
    return table[:, :-1], table[:, -1:]


def init_state(seed: int, features: int) -> dict[str, torch.Tensor]:
    """Initial weights and zero momentum."""
    gen = torch.Generator().manual_seed(seed + 1)
    state = {
        "w1": torch.randn(features, HIDDEN, generator=gen) / features**0.5,
        "b1": torch.zeros(HIDDEN),
        "w2": torch.randn(HIDDEN, 1, generator=gen) / HIDDEN**0.5,
        "b2": torch.zeros(1),
    }
    state.update({f"m_{k}": torch.zeros_like(v) for k, v in list(state.items())})
    return state


def loss_of(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the MLP on ``(x, y)``."""
    return torch.mean((torch.relu(x @ state["w1"] + state["b1"]) @ state["w2"] + state["b2"] - y) ** 2)


def run_segment(
    state: dict[str, torch.Tensor], segment: int, seed: int, x: torch.Tensor, y: torch.Tensor, steps: int
) -> dict[str, torch.Tensor]:
    """``steps`` SGD-with-momentum steps of segment ``segment`` from ``state``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + segment)
    params = {k: v.clone().requires_grad_(True) for k, v in state.items() if not k.startswith("m_")}
    moms = {k: state[f"m_{k}"].clone() for k in params}
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        grads = torch.autograd.grad(loss_of(params, x[idx], y[idx]), list(params.values()))
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                moms[name].mul_(0.9).add_(g)
                p.sub_(0.05 * moms[name])
    out = {k: v.detach() for k, v in params.items()}
    out.update({f"m_{k}": v for k, v in moms.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--segments", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed = sdk.deterministic()
    x, y = load_points(args.data)
    resumed = sdk.resume()
    state, first = (init_state(seed, x.shape[1]), 0) if resumed is None else (resumed[1], resumed[0] + 1)
    for segment in range(first, args.segments):
        state = run_segment(state, segment, seed, x, y, args.steps)
        sdk.checkpoint(state, step=segment)
    weights = {k: v for k, v in state.items() if not k.startswith("m_")}
    sdk.save_tensors("model", weights, metadata={"rows": str(x.shape[0])})
    with torch.no_grad():
        loss = float(loss_of(weights, x, y))
    (sdk.output_dir() / "metrics.json").write_text(json.dumps({"rows": x.shape[0], "loss": round(loss, 4)}))
    print(f"done: {x.shape[0]} rows, loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
