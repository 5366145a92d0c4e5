"""A model of a user's own, for `--arch own_model:small_cnn` in the tests (imported from the current directory
or PYTHONPATH, as hparr imports any `module.path:factory`)."""
import torch
import torch.nn as nn


def small_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Two 3x3 convs, a max-pool, a 3x3 conv, and a Linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(12, num_classes))


class Untraceable(nn.Module):
    """A residual block whose forward branches on a tensor's value, which torch.fx cannot trace."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.sum() > 0:  # data-dependent control flow
            x = x * 1.0
        x = x + self.body(x)
        return self.head(x.mean((2, 3)))


class DictInput(nn.Module):
    """A model whose forward takes a dict of tensors ({"image": ...}), as some training loops pass them."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.head = nn.Linear(4, num_classes)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.conv(batch["image"]).mean((2, 3)))


def dict_input(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return DictInput(num_classes, in_channels)


def no_conv(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Pooling and a Linear head: no conv layer to analyze."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(in_channels * 16, num_classes))


def with_1x1(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Two 3x3 convs with a 1x1 conv between them, and a Linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, num_classes))
