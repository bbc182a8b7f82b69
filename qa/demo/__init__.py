"""qa.demo: a small pretrained CNN and real labeled images, shipped inside qa (needs torch).

The model is ``DemoNet`` (``qa/demo/model.py``): five conv + BatchNorm + ReLU layers
(among them a depthwise 3x3 ``dwconv`` and a pointwise 1x1 ``pwconv``), two max pools, a
global average pool and a Linear head, trained on Fashion-MNIST by ``qa/demo/train.py``.
The images are 500 calibration and 2,000 evaluation images from the Fashion-MNIST test
set (MIT licence; see ``qa/demo/README.md``), none of them seen in training.

Recommended demo bitwidths (``PARAM_BW``, ``OUTPUT_BW``, ``QUANT_SCHEME``): weights at
4 bits, per tensor and symmetric; activations at 8 bits, asymmetric; scheme tf_enhanced.
With batch norms folded that costs about 15 accuracy points (87.4% -> 72.0%), and almost
all of it comes from one layer: the depthwise ``dwconv`` alone at 4 bits costs 13.8
points (next is ``conv2``, 3.7), because once its BatchNorm is folded in its largest
channel range is 5.7 times the median one, which per-tensor quantization handles badly
(per-channel 4-bit weights: 84.2%). 8-bit weights and 8-bit activations cost nothing.

Example:
    >>> from qa.demo import load_demo, calibrate, evaluate
    >>> demo = load_demo()
    >>> calibrate(demo.model, demo.calibration)
    >>> evaluate(demo.model, demo.eval_data) > 85.0
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch

from .model import CLASSES, DATA_DIR, MEAN, STD, build_model, load_weights

__all__ = ["Demo", "load_demo", "calibrate", "evaluate", "normalize",
           "PARAM_BW", "OUTPUT_BW", "QUANT_SCHEME", "FP32_ACCURACY", "CLASSES"]

PARAM_BW = 4
OUTPUT_BW = 8
QUANT_SCHEME = "tf_enhanced"
FP32_ACCURACY = 87.40  # % on the shipped evaluation images, as measured by train.py
BATCH_SIZE = 256
SUBSET_FILE = DATA_DIR / "fashion_mnist_subset.npz"


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float32 (N, 1, 28, 28), normalized as in training.

    Example:
        >>> tuple(normalize(np.zeros((3, 28, 28), np.uint8)).shape)
        (3, 1, 28, 28)
    """
    x = torch.tensor(np.asarray(images, dtype=np.uint8), dtype=torch.float32).div_(255.0)
    return x.sub_(MEAN).div_(STD).unsqueeze(1)


@dataclass
class Demo:
    """The demo model and its data.

    Attributes:
        model: DemoNet with the shipped FP32 weights, in eval mode (BatchNorms not folded).
        dummy_input: one image, shape (1, 1, 28, 28), for tracing.
        calibration: 500 images, float32 (500, 1, 28, 28), normalized.
        eval_images: 2,000 images, float32 (2000, 1, 28, 28), normalized.
        eval_labels: their classes, int64 (2000,), in 0..9 (names in ``CLASSES``).
    """

    model: torch.nn.Module
    dummy_input: torch.Tensor
    calibration: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor

    @property
    def eval_data(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(eval_images, eval_labels)``: the argument ``evaluate`` takes."""
        return self.eval_images, self.eval_labels

    def unlabeled_batches(self, num_batches: int, batch_size: int = 64) -> List[torch.Tensor]:
        """Up to ``num_batches`` batches of calibration images, without labels (for per-layer MSE).

        A list, so it can be iterated more than once.

        Example:
            >>> [tuple(b.shape) for b in load_demo().unlabeled_batches(2, 4)]
            [(4, 1, 28, 28), (4, 1, 28, 28)]
        """
        return list(self.calibration.split(batch_size))[:num_batches]


def load_demo() -> Demo:
    """Build the demo model with its shipped weights and load the shipped images.

    Only reads ``qa/demo/data/*.npz`` (no pickle, no download).

    Returns:
        A Demo.

    Example:
        >>> demo = load_demo()
        >>> tuple(demo.model(demo.dummy_input).shape)
        (1, 10)
    """
    model = load_weights(build_model()).eval()
    with np.load(SUBSET_FILE, allow_pickle=False) as data:
        calibration = normalize(data["calibration_images"])
        eval_images = normalize(data["eval_images"])
        eval_labels = torch.from_numpy(data["eval_labels"].astype(np.int64))
    return Demo(model=model, dummy_input=calibration[:1].clone(), calibration=calibration,
                eval_images=eval_images, eval_labels=eval_labels)


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def calibrate(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Forward-pass callback: run ``images`` through ``model`` in batches, in eval mode.

    Args:
        model: the model to run (e.g. the analyzer's quantization simulation).
        images: float32 (N, 1, 28, 28), e.g. ``Demo.calibration``.
    """
    model.eval()
    device = _device(model)
    with torch.no_grad():
        for batch in images.split(BATCH_SIZE):
            model(batch.to(device))


def evaluate(model: torch.nn.Module, data: Tuple[torch.Tensor, torch.Tensor]) -> float:
    """Evaluation callback: top-1 accuracy in percent.

    Args:
        model: the model to evaluate; put in eval mode first.
        data: ``(images, labels)``, e.g. ``Demo.eval_data``.

    Returns:
        The percentage of images whose highest logit is their label.
    """
    images, labels = data
    model.eval()
    device = _device(model)
    correct = 0
    with torch.no_grad():
        for x, y in zip(images.split(BATCH_SIZE), labels.split(BATCH_SIZE)):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return 100.0 * correct / max(len(labels), 1)
