"""Batch-norm folding, once for every framework: W' = W * s, b' = (b - mean) * s + beta.

``s = gamma / sqrt(var + eps)`` per output channel. The arithmetic is float64 and the result
is cast back to the weight's dtype, so that torch, Keras and ONNX fold to the same bits.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .errors import QAValueError

__all__ = ["fold_batch_norm"]


def fold_batch_norm(weight: np.ndarray, bias: Optional[np.ndarray], *, mean: np.ndarray, var: np.ndarray,
                    gamma: Optional[np.ndarray] = None, beta: Optional[np.ndarray] = None, eps: float = 1e-5,
                    axis: Union[int, Sequence[int]] = 0,
                    name: str = "layer", sigma: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Fold a batch norm that follows a linear layer into the layer's weight and bias.

    Args:
        weight: the layer's weight.
        bias: its bias, or None (a zero bias).
        mean, var, gamma, beta, eps: the batch norm's running statistics and affine parameters
            (gamma None: ones; beta None: zeros).
        axis: the weight's output-channel axis; a sequence of axes whose flattened (C-order)
            index is the output channel, as in a Keras depthwise kernel ``[kh, kw, in, mult]``
            (``axis=(2, 3)``).
        name: the layer, for errors.
        sigma: ``sqrt(var + eps)`` as the framework computes it, when its square root rounds
            otherwise than numpy's (torch's vectorized float32 sqrt does, in the last bit; AIMET
            folds with torch's).

    Returns:
        (folded weight, folded bias) in the weight's dtype; the bias has one value per channel.

    Raises:
        QAValueError: the batch norm's channels do not match the weight's output channels.

    Example:
        >>> w, b = fold_batch_norm(np.ones((2, 3), np.float32), None, mean=np.array([1.0, 0.0]),
        ...                        var=np.array([3.0, 0.0]), gamma=np.array([2.0, 1.0]), eps=1.0)
        >>> w.tolist(), b.tolist()
        ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [-1.0, 0.0])
    """
    weight = np.asarray(weight)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    axes = tuple(int(a) % weight.ndim for a in axes)
    channel_shape = tuple(weight.shape[a] for a in axes)
    # float32 weights fold in float32, step for step as AIMET (and the frameworks' own fusions) do:
    # the folded values equal AIMET's bit for bit, so encodings computed from them can too
    dt = np.float32 if weight.dtype == np.float32 else np.float64
    var = np.asarray(var).astype(dt).reshape(-1)
    mean = np.asarray(mean).astype(dt).reshape(-1)
    channels = int(np.prod(channel_shape))
    if var.size != channels or mean.size != channels:
        raise QAValueError(f"{name}: the batch norm has {var.size} channels, the weight {channels} output channels")
    gamma = np.ones(channels, dt) if gamma is None else np.asarray(gamma).astype(dt).reshape(-1)
    beta = np.zeros(channels, dt) if beta is None else np.asarray(beta).astype(dt).reshape(-1)
    s = gamma / (np.sqrt(var + dt(eps)) if sigma is None else np.asarray(sigma).astype(dt).reshape(-1))
    shape = [1] * weight.ndim
    for a, n in zip(axes, channel_shape):
        shape[a] = n
    folded_w = (weight.astype(dt) * s.reshape(shape)).astype(weight.dtype)
    b = np.zeros(channels, dt) if bias is None else np.asarray(bias).astype(dt).reshape(-1)
    folded_b = ((b - mean) * s + beta).astype(weight.dtype)
    return folded_w, folded_b
