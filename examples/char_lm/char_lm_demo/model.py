"""A tiny causal transformer for next-character prediction: ``ids (N, C) -> logits (N, vocab)``.

Token and learned position embeddings, ``layers`` pre-norm ``nn.TransformerEncoderLayer`` s (GELU, dropout 0
so that training and validation are deterministic) under a causal mask, a final LayerNorm, and a linear
head on the last position (which has seen the whole window). Attention runs on the math kernel of
scaled_dot_product_attention, which has the double backward RT-HPO's Hessian-vector products need (the
CPU flash kernel has none). :func:`build` is the model factory
(``model.factory: char_lm_demo.model:build``). The inputs are integer ids (any integer dtype: the data
factory stores them as uint8); they are cast to int64 for the embedding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class CharTransformer(nn.Module):
    """Embedding + position embedding, ``layers`` causal encoder layers, LayerNorm, linear head."""

    def __init__(self, context: int, vocab: int, *, d_model: int = 64, heads: int = 4, layers: int = 2,
                 ff_mult: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(context, d_model) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=ff_mult * d_model, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)
        # True above the diagonal: position i attends to positions <= i only (any dtype, unlike a -inf mask).
        self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, vocab)`` of the character after each window ``x`` ``(N, context)`` of ids."""
        h = self.embed(x.long()) + self.pos
        # The math kernel of scaled_dot_product_attention: the CPU flash kernel has no double backward, which
        # RT-HPO's Hessian-vector product (lr.hvp double_backward, the default without BatchNorm) needs.
        with sdpa_kernel(SDPBackend.MATH):
            for layer in self.layers:
                h = layer(h, src_mask=self.mask, is_causal=True)
        return self.head(self.norm(h[:, -1]))


def build(input_shape: tuple[int, ...], num_classes: int, *, d_model: int = 64, heads: int = 4,
          layers: int = 2, ff_mult: int = 4) -> CharTransformer:
    """The model factory: ``input_shape`` is ``(context,)``, ``num_classes`` the vocabulary (ids and targets
    share it)."""
    if len(input_shape) != 1:
        raise ValueError(f"char_lm_demo.model.build expects windows of ids, input_shape (context,), "
                         f"but got {tuple(input_shape)}")
    return CharTransformer(int(input_shape[0]), int(num_classes), d_model=d_model, heads=heads, layers=layers,
                           ff_mult=ff_mult)
