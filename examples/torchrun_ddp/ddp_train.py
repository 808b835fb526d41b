"""DistributedDataParallel training of a small classifier on every device the job was given.

Started by torchrun (one process per device): each rank trains on its own shard of a synthetic
data set, gradients are averaged across ranks (gloo on CPU, NCCL on CUDA) and rank 0 saves the
model and a timestamped log.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cuda = os.environ.get("FLOPEX_DEVICE") == "cuda" and torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    seed = int(os.environ.get("FLOPEX_SEED", "0"))
    torch.manual_seed(seed)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[local] if cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed * 1000 + rank)  # each rank its own shard
    centers = torch.randn(3, 8, generator=torch.Generator().manual_seed(seed + 7))
    for _step in range(args.steps):
        labels = torch.randint(0, 3, (64,), generator=gen)
        x = centers[labels] + 0.5 * torch.randn(64, 8, generator=gen)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(ddp(x.to(device)), labels.to(device))
        loss.backward()
        optimizer.step()
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / "model.safetensors"))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        (out / "train.log").write_text(f"{stamp} {world} processes, {args.steps} steps, last loss {loss.item():.6f}\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
