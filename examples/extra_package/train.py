"""Fit a small linear model with plain PyTorch and report its training as a table made by tabulate.

Nothing here knows flopex beyond the output folder: tabulate comes from the bundle's
requirements.txt, torch and safetensors from the provider.
"""

import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from tabulate import tabulate

out = Path(os.environ.get("FLOPEX_OUTPUT_DIR", "output"))
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(int(os.environ.get("FLOPEX_SEED", "0")))
torch.set_num_threads(1)

x = torch.randn(512, 8)
y = x @ torch.randn(8, 1) + 0.01 * torch.randn(512, 1)
model = torch.nn.Linear(8, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
rows = []
for epoch in range(1, 101):
    opt.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    if epoch % 20 == 0:
        rows.append((epoch, loss.item()))

save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
table = tabulate(rows, headers=["epoch", "loss"], floatfmt=".6f")
(out / "training.txt").write_text(table + "\n")
print(table)
