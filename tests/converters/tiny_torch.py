"""Tiny PyTorch modules for converter tests (importable as ``tests.converters.tiny_torch:...``)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def make_mlp() -> nn.Module:
    """6 features -> 3 class probabilities; random init (weights come from --weights in tests)."""
    return nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3), nn.Softmax(dim=1)
    )


def trained_mlp(steps: int = 30) -> nn.Module:
    """A few Adam steps on a separable synthetic problem: real training, tiny cost."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(128, 6)).astype(np.float32))
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    model = make_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        probs = model(x)
        loss = nn.functional.nll_loss(torch.log(probs + 1e-9), y)
        loss.backward()
        optimizer.step()
    return model.eval()


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(torch.relu(self.conv(x)).flatten(1)), dim=1)


class FixedBatch(nn.Module):
    """Bakes the batch size into a reshape: its batch axis cannot be made dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).reshape(2, 4)
