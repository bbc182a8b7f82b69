"""The demo network: a small Fashion-MNIST CNN in plain PyTorch, and its shipped weights."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch
from torch import nn

from ..errors import QAValueError

DATA_DIR = Path(__file__).resolve().parent / "data"
WEIGHTS_FILE = DATA_DIR / "weights.npz"

# Fashion-MNIST training-set pixel statistics (of uint8 / 255); inputs are (x - MEAN) / STD.
MEAN = 0.2860
STD = 0.3530

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class DemoNet(nn.Module):
    """28x28 grey image -> 10 logits.

    conv1 -> conv2 -> pool -> depthwise 3x3 (dwconv) -> pointwise 1x1 (pwconv) -> pool ->
    conv5 -> global average pool -> fc. Every conv is followed by a BatchNorm and a ReLU,
    so an analyzer has batch norms to fold.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.dwconv = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu3 = nn.ReLU()
        self.pwconv = nn.Conv2d(32, 64, 1, bias=False)
        self.bn4 = nn.BatchNorm2d(64)
        self.relu4 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv5 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn5 = nn.BatchNorm2d(64)
        self.relu5 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool1(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.bn3(self.dwconv(x)))
        x = self.pool2(self.relu4(self.bn4(self.pwconv(x))))
        x = self.relu5(self.bn5(self.conv5(x)))
        return self.fc(self.flatten(self.gap(x)))


def build_model() -> nn.Module:
    """A freshly initialised DemoNet (random weights, train mode).

    Returns:
        The untrained network; ``load_weights`` fills it with the shipped weights.

    Example:
        >>> model = build_model()
        >>> tuple(model(torch.zeros(2, 1, 28, 28)).shape)
        (2, 10)
    """
    return DemoNet()


def state_arrays(model: nn.Module) -> Dict[str, np.ndarray]:
    """The model's floating-point state as float32 numpy arrays keyed by state_dict name.

    BatchNorm's ``num_batches_tracked`` counters are left out: they only matter for training.
    """
    return {k: v.detach().cpu().numpy().astype(np.float32)
            for k, v in model.state_dict().items() if v.is_floating_point()}


def load_weights(model: nn.Module, path: Union[str, Path] = WEIGHTS_FILE) -> nn.Module:
    """Load float32 arrays from an ``.npz`` (no pickle) into ``model``; returns the model.

    Args:
        model: a DemoNet (from ``build_model``).
        path: the weights file (default: the shipped ``data/weights.npz``).

    Returns:
        ``model``, with every floating-point parameter and buffer replaced.

    Example:
        >>> model = load_weights(build_model())
    """
    with np.load(path, allow_pickle=False) as arrays:
        state = {k: torch.from_numpy(arrays[k].copy()) for k in arrays.files}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise QAValueError(f"{path}: weights do not match the demo model "
                         f"(missing {missing}, unexpected {unexpected})")
    return model
