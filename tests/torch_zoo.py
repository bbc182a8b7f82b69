"""Plain-torch models shaped like the real ones qa meets (no downloads, random weights).

* :class:`SameConvNet`: EfficientNet-style "static same padding" convs, ``nn.Conv2d`` subclasses
  that own their padding module and call ``F.conv2d`` themselves, followed by batch norms.
* :class:`TinyBert`: a BERT-like encoder written as Hugging Face writes it (explicit ``matmul``,
  ``softmax``, an additive attention mask of ``finfo.min``, residual adds, ``F.gelu``), taking
  keyword inputs (``input_ids``, ``attention_mask``) and returning a dict.
* :class:`TinyGpt`: a GPT-2-like decoder whose output head is tied to the token embedding
  (``F.linear(h, self.wte.weight)``), with a causal mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SameConv", "SameConvNet", "TinyBert", "TinyGpt", "bert_inputs"]


class SameConv(nn.Conv2d):
    """A Conv2d with TensorFlow's "same" padding, as EfficientNet ports write it."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(cin, cout, k, stride=stride, groups=groups, bias=bias)
        pad = max(k - stride, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SameConvNet(nn.Module):
    """stem conv + BN + swish, a depthwise conv + BN, a pointwise conv + BN, pooled to a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = SameConv(3, 8, 3, stride=2)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = SameConv(8, 8, 3, groups=8)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = SameConv(8, 12, 1)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12, 5)
        g = torch.Generator().manual_seed(3)
        for bn in (self.bn0, self.bn1, self.bn2):
            with torch.no_grad():
                bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
                bn.bias.copy_(torch.rand(bn.num_features, generator=g) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn0(self.conv_stem(x)))
        x = F.silu(self.bn1(self.dw(x)))
        x = self.bn2(self.pw(x))
        return self.head(x.mean((2, 3)))


class _SelfAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.dh).permute(0, 2, 1, 3)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(h)), self.split(self.key(h)), self.split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh)
        scores = scores + mask
        probs = nn.functional.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return ctx.view(ctx.shape[0], ctx.shape[1], -1)


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = _SelfAttention(d, heads)
        self.attention.output = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.intermediate = nn.Linear(d, 4 * d)
        self.output = nn.Linear(4 * d, d)
        self.ln2 = nn.LayerNorm(d)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.attention.output(self.attention.self(h, mask))
        h = self.ln1(a + h)
        return self.ln2(self.output(F.gelu(self.intermediate(h))) + h)


class TinyBert(nn.Module):
    """input_ids (int64) and attention_mask (0/1) in, {"last_hidden_state", "pooler_output"} out."""

    def __init__(self, vocab: int = 50, d: int = 32, heads: int = 4, layers: int = 2, max_len: int = 16) -> None:
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word = nn.Embedding(vocab, d)
        self.embeddings.position = nn.Embedding(max_len, d)
        self.embeddings.norm = nn.LayerNorm(d)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(_Layer(d, heads) for _ in range(layers))
        self.pooler = nn.Linear(d, d)
        self.register_buffer("position_ids", torch.arange(max_len)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
        t = input_ids.shape[1]
        h = self.embeddings.word(input_ids) + self.embeddings.position(self.position_ids[:, :t])
        h = self.embeddings.norm(h)
        mask = (1.0 - attention_mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        for layer in self.encoder.layer:
            h = layer(h, mask)
        return {"last_hidden_state": h, "pooler_output": torch.tanh(self.pooler(h[:, 0]))}


def bert_inputs(batch: int, t: int, vocab: int = 50, seed: int = 0) -> dict:
    """Token ids and a padding mask (the last positions of every other row are padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, t), generator=g)
    mask = torch.ones(batch, t, dtype=torch.int64)
    mask[::2, t - t // 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


class TinyGpt(nn.Module):
    """Token + position embeddings, one causal attention block, an LM head tied to the embedding."""

    def __init__(self, vocab: int = 40, d: int = 24, max_len: int = 16) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.ln_1, self.ln_f = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.register_buffer("bias", torch.tril(torch.ones(max_len, max_len, dtype=torch.bool)), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        h = self.wte(input_ids) + self.wpe(torch.arange(t, device=input_ids.device))
        q, k, v = self.c_attn(self.ln_1(h)).split(h.shape[-1], dim=-1)
        w = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
        w = w.masked_fill(~self.bias[:t, :t], -1e9)
        h = h + self.c_proj(w.softmax(-1) @ v)
        return F.linear(self.ln_f(h), self.wte.weight)
