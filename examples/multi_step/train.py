"""Step 2: fit a small MLP to the data of step 1; save the model, a timestamped log and a loss plot."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed = int(os.environ.get("FLOPEX_SEED", "0"))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    data = load_file(args.data)
    x, y = data["x"], data["y"]
    model = torch.nn.Sequential(torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(seed + 1)
    losses = []
    with open(out / "train.log", "w") as log:
        for epoch in range(args.epochs):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), 64):
                batch = order[start : start + 64]
                optimizer.zero_grad()
                loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                losses.append(torch.nn.functional.mse_loss(model(x), y).item())
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} epoch {epoch} loss {losses[-1]:.6f}\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE")
    fig.savefig(out / "loss.pdf")  # the PDF carries its creation date: it differs on every run
    print(f"final loss {losses[-1]:.6f}")


if __name__ == "__main__":
    main()
