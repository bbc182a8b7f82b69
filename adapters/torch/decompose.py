"""Composite torch functions written out in the ops a deployed graph has, so each is a layer.

``F.scaled_dot_product_attention`` is written out the same way (:func:`scaled_dot_product_attention`):
an exported graph computes it as MatMul, Mul, Add, Softmax, MatMul, and those are where
attention quantization goes wrong.

``F.multi_head_attention_forward`` (what ``nn.MultiheadAttention`` and so
``nn.TransformerEncoderLayer`` and torchvision's ViT call) is one function to a function mode:
its projections, score matmul, mask add and softmax run unseen. :func:`multi_head_attention`
computes the same thing from ``F.linear``, ``bmm``, ``softmax`` and friends, which the
interceptor sees one by one (``attn/linear`` ... ``attn/softmax``). It covers the eval-mode
forms models use (packed or separate projection weights, boolean or additive masks, key padding
masks, batched or not); for the rest (``bias_k``/``bias_v``, ``add_zero_attn``, static keys,
training with dropout) it returns ``NotImplemented`` and the call runs as one layer.

The results equal torch's to float32 rounding: torch computes the same products, sometimes
through a fused kernel.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

__all__ = ["multi_head_attention"]


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def _mask(attn_mask: Optional[torch.Tensor], key_padding_mask: Optional[torch.Tensor], is_causal: bool,
          n: int, heads: int, tgt: int, src: int, dtype: torch.dtype, device: Any) -> Optional[torch.Tensor]:
    """One additive mask broadcastable to the scores' (n * heads, tgt, src)."""
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        if mask.dim() == 2:
            mask = mask.unsqueeze(0)
    elif is_causal:
        causal = torch.ones(tgt, src, dtype=torch.bool, device=device).triu(1)
        mask = _additive(causal, dtype).unsqueeze(0)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, dtype).view(n, 1, 1, src).expand(-1, heads, -1, -1)
        padding = padding.reshape(n * heads, 1, src)
        mask = padding if mask is None else mask + padding
    return mask


def multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim_to_check: int,
                         num_heads: int, in_proj_weight: Optional[torch.Tensor], in_proj_bias: Optional[torch.Tensor],
                         bias_k: Optional[torch.Tensor], bias_v: Optional[torch.Tensor], add_zero_attn: bool,
                         dropout_p: float, out_proj_weight: torch.Tensor, out_proj_bias: Optional[torch.Tensor],
                         training: bool = True, key_padding_mask: Optional[torch.Tensor] = None,
                         need_weights: bool = True, attn_mask: Optional[torch.Tensor] = None,
                         use_separate_proj_weight: bool = False, q_proj_weight: Optional[torch.Tensor] = None,
                         k_proj_weight: Optional[torch.Tensor] = None, v_proj_weight: Optional[torch.Tensor] = None,
                         static_k: Optional[torch.Tensor] = None, static_v: Optional[torch.Tensor] = None,
                         average_attn_weights: bool = True, is_causal: bool = False) -> Any:
    """``F.multi_head_attention_forward`` in seen ops (``NotImplemented`` for forms it leaves to torch)."""
    if (bias_k is not None or bias_v is not None or add_zero_attn or static_k is not None or static_v is not None
            or (training and dropout_p > 0)):
        return NotImplemented
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt, n, embed = query.shape
    src = key.shape[0]
    head = embed // num_heads
    if use_separate_proj_weight:
        wq, wk, wv = q_proj_weight, k_proj_weight, v_proj_weight
    else:
        wq, wk, wv = in_proj_weight.chunk(3)
    bq = bk = bv = None
    if in_proj_bias is not None:
        bq, bk, bv = in_proj_bias.chunk(3)
    q = F.linear(query, wq, bq).view(tgt, n * num_heads, head).transpose(0, 1)
    k = F.linear(key, wk, bk).view(src, n * num_heads, head).transpose(0, 1)
    v = F.linear(value, wv, bv).view(src, n * num_heads, head).transpose(0, 1)
    scores = torch.bmm(q * math.sqrt(1.0 / head), k.transpose(1, 2))
    mask = _mask(attn_mask, key_padding_mask, is_causal, n, num_heads, tgt, src, scores.dtype, scores.device)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    out = torch.bmm(probs, v).transpose(0, 1).contiguous().view(tgt * n, embed)
    out = F.linear(out, out_proj_weight, out_proj_bias).view(tgt, n, embed)
    weights: Optional[torch.Tensor] = None
    if need_weights:
        weights = probs.view(n, num_heads, tgt, src)
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            weights = weights.squeeze(0)
    return (out.squeeze(1) if unbatched else out), weights


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False) -> Any:
    """``F.scaled_dot_product_attention`` (Hugging Face's default attention) in seen ops:
    ``matmul``, ``mul`` by the scale, the mask (``add``, or ``masked_fill`` for a boolean one),
    ``softmax``, ``matmul``; ``NotImplemented`` with dropout."""
    if dropout_p > 0:
        return NotImplemented
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    factor = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    if is_causal:
        tgt, src = query.shape[-2], key.shape[-2]
        causal = torch.ones(tgt, src, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value)


DECOMPOSED = {"multi_head_attention_forward": multi_head_attention,
              "scaled_dot_product_attention": scaled_dot_product_attention}
