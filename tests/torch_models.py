"""Small PyTorch models for the analyzer tests (tests/test_torch_analyzer.py).

Every model is tiny (a few hundred parameters) so that a full ``analyze`` takes well under
a second on a CPU. Batch norms get non-trivial statistics through ``randomize_bn``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "randomize_bn", "ConvBN", "ConvTransposeBN", "LinearBN", "BNAfterAdd", "BNInputAlsoReadByLayer",
    "BNInputAlsoReadFunctionally", "Residual", "Depthwise", "ConvTransposeNet", "MLP", "SharedModule",
    "TwoInputs", "KeywordInputs", "UnfoldableBNNet", "LowBitNet", "PlainConvNet", "ExecutionOrderNet",
    "PreservationNet", "InplaceReluNet", "TiedEmbedding", "TiedLinears", "ReusedActivation", "DropoutBNNet",
    "DynamicCalls",
]


def randomize_bn(bn: nn.Module, seed: int = 0) -> nn.Module:
    """Running statistics and affine parameters far from the (0, 1, 1, 0) defaults."""
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
        bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
        if bn.weight is not None:
            bn.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
            bn.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return bn


# ---- batch-norm folding ---------------------------------------------------------------------

_CONVS = {1: (nn.Conv1d, nn.BatchNorm1d), 2: (nn.Conv2d, nn.BatchNorm2d), 3: (nn.Conv3d, nn.BatchNorm3d)}


class ConvBN(nn.Module):
    """ConvNd -> BatchNormNd -> ReLU (foldable). ``groups=channels`` makes the conv depthwise."""

    def __init__(self, dim: int = 2, bias: bool = True, cin: int = 3, cout: int = 4, groups: int = 1) -> None:
        super().__init__()
        conv, bn = _CONVS[dim]
        self.conv = conv(cin, cout, 3, padding=1, bias=bias, groups=groups)
        self.bn = randomize_bn(bn(cout), seed=dim)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ConvTransposeBN(nn.Module):
    """ConvTranspose2d -> BatchNorm2d (foldable along the weight's axis 1)."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.convt = nn.ConvTranspose2d(3, 5, 3, stride=2, bias=bias)
        self.bn = randomize_bn(nn.BatchNorm2d(5), seed=7)

    def forward(self, x):
        return self.bn(self.convt(x))


class LinearBN(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5, bias=bias)
        self.bn = randomize_bn(nn.BatchNorm1d(5), seed=3)
        self.relu = nn.ReLU()
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.relu(self.bn(self.fc(x))))


class BNAfterAdd(nn.Module):
    """The batch norm reads the sum of two convs: it cannot be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.bn = randomize_bn(nn.BatchNorm2d(4), seed=11)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv1(x) + self.conv2(x)))


class BNInputAlsoReadByLayer(nn.Module):
    """The conv output feeds the batch norm and a ReLU module: folding would change the ReLU's input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(4), seed=12)
        self.relu = nn.ReLU()
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        c = self.conv(x)
        return self.out(torch.cat([self.bn(c), self.relu(c)], dim=1))


class BNInputAlsoReadFunctionally(nn.Module):
    """The conv output feeds the batch norm and a functional add outside any module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = randomize_bn(nn.BatchNorm2d(4), seed=13)

    def forward(self, x):
        c = self.conv(x)
        return self.bn(c) + c


# ---- end-to-end models ----------------------------------------------------------------------

class Residual(nn.Module):
    """conv -> relu -> conv, plus the block input (a functional add) -> relu -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = randomize_bn(nn.BatchNorm2d(4), seed=21)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.relu0(self.stem(x))
        y = self.conv2(self.relu1(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.relu2(y + x))))


class Depthwise(nn.Module):
    """Depthwise conv (groups = channels) with BN, then pointwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.pw0 = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.bn = randomize_bn(nn.BatchNorm2d(6), seed=31)
        self.relu = nn.ReLU6()
        self.pw = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.pw(self.relu(self.bn(self.dw(self.pw0(x)))))


class ConvTransposeNet(nn.Module):
    """conv -> relu -> conv transpose -> relu -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2)
        self.relu2 = nn.ReLU()
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(self.relu2(self.up(self.relu(self.conv(x)))))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(16, 16)
        self.relu = nn.ReLU()
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc3(self.relu(self.fc2(self.act(self.fc1(x)))))


class SharedModule(nn.Module):
    """One Linear module called twice in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(8, 12)
        self.shared = nn.Linear(12, 12)
        self.act = nn.Tanh()
        self.fc_out = nn.Linear(12, 3)

    def forward(self, x):
        x = self.act(self.fc_in(x))
        x = self.act(self.shared(x))
        x = self.act(self.shared(x))
        return self.fc_out(x)


class TwoInputs(nn.Module):
    """forward(image, vector): two model inputs, joined by a functional cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.vec = nn.Linear(5, 4)
        self.head = nn.Linear(8, 2)

    def forward(self, image, vector):
        a = self.flatten(self.pool(self.relu(self.conv(image))))
        return self.head(torch.cat([a, self.vec(vector)], dim=1))


class KeywordInputs(nn.Module):
    """forward(*, image, mask): inputs passed by keyword only, two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_image = nn.Linear(6, 8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 3)
        self.fc_mask = nn.Linear(4, 2)

    def forward(self, *, image, mask):
        return self.head(self.relu(self.fc_image(image))), self.fc_mask(mask)


class UnfoldableBNNet(nn.Module):
    """A foldable BN (conv0 -> bn0) and an unfoldable one (after a functional add)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn0 = randomize_bn(nn.BatchNorm2d(4), seed=41)
        self.relu0 = nn.ReLU()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn = randomize_bn(nn.BatchNorm2d(4), seed=42)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.relu0(self.bn0(self.conv0(x)))
        return self.head(self.relu(self.bn(self.conv1(x) + self.conv2(x))))


class LowBitNet(nn.Module):
    """Two convs and one Linear: Gemm is the only op of its type (for per-op config experiments)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        x = self.relu2(self.conv2(x))
        return self.fc(self.flatten(self.pool(x)))


class PlainConvNet(nn.Module):
    """No batch norm (nothing to fold): conv+relu (a supergroup), a conv whose output is quantized,
    a sigmoid, a conv transpose, pooling, flatten and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.sig = nn.Sigmoid()
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        x = self.sig(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(self.up(x))))


class ExecutionOrderNet(nn.Module):
    """Modules defined in an order that differs from the order they run in."""

    def __init__(self) -> None:
        super().__init__()
        self.z_last = nn.Linear(6, 2)
        self.m_middle = nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.a_first = nn.Linear(4, 6)

    def forward(self, x):
        return self.z_last(self.relu(self.m_middle(self.a_first(x))))


class PreservationNet(nn.Module):
    """A foldable BN inside a submodule, an unfoldable BN, and a dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), randomize_bn(nn.BatchNorm2d(4), seed=51), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = randomize_bn(nn.BatchNorm2d(4), seed=52)
        self.drop = nn.Dropout(0.25)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        x = self.block(x)
        x = self.bn(self.conv(x) + x)
        return self.fc(self.flatten(self.drop(x)))


class InplaceReluNet(nn.Module):
    """conv -> bn -> ReLU -> conv -> ReLU -> flatten -> linear, with in-place ReLUs as in torchvision
    (``inplace=False`` gives the same model with out-of-place ReLUs)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = randomize_bn(nn.BatchNorm2d(4), seed=61)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu2 = nn.ReLU(inplace=inplace)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        return self.fc(self.flatten(self.relu2(self.conv2(x))))


# ---- shared parameters, repeated calls, training mode (tests/test_adapter_edge_cases.py) ---------

class TiedEmbedding(nn.Module):
    """A language-model head tied to its embedding (``head.weight = emb.weight``), then a batch norm
    that reads only the head's output: folding it would rescale the embedding too."""

    def __init__(self, vocab: int = 12, dim: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.act = nn.Tanh()
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight
        self.bn = randomize_bn(nn.BatchNorm1d(vocab), seed=71)

    def forward(self, ids):
        h = self.act(self.fc(self.emb(ids).mean(dim=1)))
        return self.bn(self.head(h))


class TiedLinears(nn.Module):
    """Two Linear layers sharing one weight (biases of their own), a ReLU between them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_a = nn.Linear(6, 6)
        self.relu = nn.ReLU()
        self.fc_b = nn.Linear(6, 6)
        self.fc_b.weight = self.fc_a.weight

    def forward(self, x):
        return self.fc_b(self.relu(self.fc_a(x)))


class ReusedActivation(nn.Module):
    """One ReLU6 instance called twice, on tensors of very different ranges (EfficientNet reuses
    one activation module everywhere), and one Linear applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(4, 6)
        self.act = nn.ReLU6()
        self.shared = nn.Linear(6, 6)
        self.fc_out = nn.Linear(6, 3)

    def forward(self, x):
        small = self.act(self.fc_in(x) * 0.05)  # ranges to about 0.1
        big = self.act(self.shared(small) * 40.0 + 3.0)  # ranges up to 6
        return self.fc_out(self.shared(big))


class DropoutBNNet(nn.Module):
    """A dropout and a batch norm that cannot fold (after a functional add): a model whose outputs
    change if it runs in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(6, 8)
        self.bn = randomize_bn(nn.BatchNorm1d(8), seed=81)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.drop(self.bn(self.fc1(x) + self.fc2(x))))


class DynamicCalls(nn.Module):
    """The number of calls depends on the batch: ``extra`` runs only for batches of more than 4
    rows, ``act`` once per row beyond 2 (at most 3 times)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.extra = nn.Sigmoid()

    def forward(self, x):
        h = self.fc(x)
        for _ in range(min(3, max(1, x.shape[0] - 2))):
            h = self.act(h)
        if x.shape[0] > 4:
            h = self.extra(h)
        return h
