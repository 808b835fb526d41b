"""Step 1: a synthetic regression data set (y = a noisy cubic of x), seeded by the job's seed."""

from __future__ import annotations

import argparse
import os

import torch
from safetensors.torch import save_file


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=1024)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(int(os.environ.get("FLOPEX_SEED", "0")))
    x = torch.rand(args.samples, 1, generator=gen) * 4 - 2
    y = 0.5 * x**3 - x + 0.1 * torch.randn(args.samples, 1, generator=gen)
    save_file({"x": x, "y": y}, args.out)
    print(f"wrote {args.samples} samples to {args.out}")


if __name__ == "__main__":
    main()
