"""Train a small MLP on synthetic data with flopex checkpoints (replay verification) and tensor outputs."""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from marketplace import sdk


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4096)
    args = parser.parse_args()

    seed = sdk.deterministic()
    device = torch.device("cuda" if sdk.device() == "cuda" and torch.cuda.is_available() else "cpu")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(args.samples, 16, generator=gen)
    w_true = torch.randn(16, 1, generator=gen)
    y = torch.sin(x @ w_true) + 0.05 * torch.randn(args.samples, 1, generator=gen)
    x, y = x.to(device), y.to(device)

    model = nn.Sequential(nn.Linear(16, args.hidden), nn.ReLU(), nn.Linear(args.hidden, 1)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    start = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(args.samples, generator=gen).to(device)
        for i in range(0, args.samples, 128):
            idx = perm[i : i + 128]
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            full = nn.functional.mse_loss(model(x), y).item()
        losses.append(full)
        print(f"epoch {epoch} loss {full:.5f}", flush=True)
        sdk.checkpoint(model.state_dict(), step=epoch)
        sdk.progress((epoch + 1) / args.epochs, f"epoch {epoch} done")
    sdk.save_tensors("model", model.state_dict(), metadata={"epochs": str(args.epochs)})
    (sdk.output_dir() / "metrics.json").write_text(
        json.dumps(
            {
                "losses": losses,
                "seed": seed,
                "seconds": time.time() - start,
                "device": str(device),
            }
        )
    )
    print("done", flush=True)


if __name__ == "__main__":
    main()
