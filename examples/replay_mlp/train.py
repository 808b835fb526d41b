"""Train a small MLP in segments, with a checkpoint after each one: a job built for replay verification.

Every segment is a fixed number of SGD-with-momentum steps whose mini-batches are drawn from a
generator seeded by the job's seed and the segment's number, and the checkpoint holds the whole
training state (weights and momentum). So any segment can be re-run from the checkpoint before it
and gives the checkpoint after it again: a verifier replays a random sample of segments
(``sdk.resume`` / ``FLOPEX_REPLAY_*``). The training functions are importable, so the
verification benchmark runs the very same steps in-process.
"""

from __future__ import annotations

import argparse
import json

import torch

from marketplace import sdk

FEATURES, HIDDEN, SAMPLES, BATCH = 16, 32, 1024, 64


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic regression data set of ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(SAMPLES, FEATURES, generator=gen)
    w = torch.randn(FEATURES, 1, generator=gen)
    return x, torch.sin(x @ w) + 0.05 * torch.randn(SAMPLES, 1, generator=gen)


def init_state(seed: int, hidden: int = HIDDEN) -> dict[str, torch.Tensor]:
    """Initial weights and zero momentum."""
    gen = torch.Generator().manual_seed(seed + 1)
    state = {
        "w1": torch.randn(FEATURES, hidden, generator=gen) / FEATURES**0.5,
        "b1": torch.zeros(hidden),
        "w2": torch.randn(hidden, 1, generator=gen) / hidden**0.5,
        "b2": torch.zeros(1),
    }
    for name in list(state):
        state[f"m_{name}"] = torch.zeros_like(state[name])
    return state


def loss_of(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the MLP on ``(x, y)``."""
    h = torch.relu(x @ state["w1"] + state["b1"])
    return torch.mean((h @ state["w2"] + state["b2"] - y) ** 2)


def run_segment(
    state: dict[str, torch.Tensor],
    segment: int,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int = 5,
    lr: float = 0.05,
    momentum: float = 0.9,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Run segment ``segment`` (``steps`` SGD steps) from ``state``; return the new state (float32)."""
    x, y = data
    gen = torch.Generator().manual_seed(seed * 1_000_003 + segment)
    params = {k: v.to(dtype).clone().requires_grad_(True) for k, v in state.items() if not k.startswith("m_")}
    moms = {k: state[f"m_{k}"].to(dtype).clone() for k in params}
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        loss = loss_of(params, x[idx].to(dtype), y[idx].to(dtype))
        grads = torch.autograd.grad(loss, list(params.values()))
        with torch.no_grad():
            for (name, p), g in zip(params.items(), grads, strict=True):
                moms[name].mul_(momentum).add_(g)
                p.sub_(lr * moms[name])
    out = {k: v.detach().float() for k, v in params.items()}
    out.update({f"m_{k}": v.float() for k, v in moms.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    torch.set_num_threads(1)
    seed = sdk.deterministic()
    data = make_data(seed)
    resumed = sdk.resume()
    if resumed is None:
        state, first = init_state(seed), 0
    else:
        step, state = resumed
        first = step + 1
    for segment in range(first, args.segments):
        state = run_segment(state, segment, seed, data, steps=args.steps)
        sdk.checkpoint(state, step=segment)
    weights = {k: v for k, v in state.items() if not k.startswith("m_")}
    sdk.save_tensors("model", weights, metadata={"segments": str(args.segments)})
    with torch.no_grad():
        loss = float(loss_of(weights, *data))
    (sdk.output_dir() / "metrics.json").write_text(json.dumps({"segments": args.segments, "loss": round(loss, 4)}))
    print(f"done: loss {loss:.4f}", flush=True)


if __name__ == "__main__":
    main()
