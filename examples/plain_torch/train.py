"""Fit a line with plain PyTorch. Knows nothing of flopex."""

import torch

torch.manual_seed(0)
x = torch.linspace(-1, 1, 256).unsqueeze(1)
y = 3 * x - 0.5 + 0.01 * torch.randn_like(x)
layer = torch.nn.Linear(1, 1)
opt = torch.optim.SGD(layer.parameters(), lr=0.1)
for _ in range(200):
    loss = torch.nn.functional.mse_loss(layer(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"weight {layer.weight.item():.3f} bias {layer.bias.item():.3f} loss {loss.item():.6f}")
