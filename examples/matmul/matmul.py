"""The built-in matrix-product job: ``C = A·B`` for the ``a`` and ``b`` tensors of ``inputs.safetensors``.

The product is written to ``product.safetensors`` (tensor ``c``) in the dtype named by
``--dtype`` (float32 by default). Verifiers check it with Freivalds' method in O(n²)
(``marketplace.verify.freivalds.freivalds_check``), with random vectors drawn only after the result is
committed on chain. ``make_inputs`` builds an input file for a bundle.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from marketplace import sdk

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def make_inputs(path: str | Path, n: int, seed: int = 0, *, m: int | None = None, k: int | None = None) -> Path:
    """Write ``a`` (n×k) and ``b`` (k×m) standard-normal float32 matrices to ``path``."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    k, m = k or n, m or n
    save_file({"a": torch.randn(n, k, generator=gen), "b": torch.randn(k, m, generator=gen)}, str(path))
    return Path(path)


def multiply(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The product in ``dtype`` (computed on the job's device)."""
    device = torch.device("cuda" if sdk.device() == "cuda" and torch.cuda.is_available() else "cpu")
    return (a.to(device, dtype) @ b.to(device, dtype)).cpu()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default="inputs.safetensors")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args()
    tensors = sdk.load_tensors(args.input)
    c = multiply(tensors["a"], tensors["b"], DTYPES[args.dtype])
    sdk.save_tensors("product", {"c": c}, metadata={"dtype": args.dtype})
    print(f"product {tuple(c.shape)} {args.dtype}", flush=True)


if __name__ == "__main__":
    main()
