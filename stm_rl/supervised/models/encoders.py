"""Input encoders: what a task's input steps become before the sequence core sees them.

A task declares its input with an ``InputSpec`` (``tasks.base``); :func:`make_encoder` builds the matching
module, so models never special-case a task: vectors pass through, tokens are embedded (associative
retrieval, 100-d in the paper), sentences are a position-weighted sum of word embeddings (bAbI; the
"position encoding" of Sukhbaatar et al. 2015, used by the SAM paper's bAbI model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm_rl.supervised.tasks.base import InputSpec, SentenceInput, TokenInput, VectorInput


class PositionWeightedSentenceEncoder(nn.Module):
    """``[B, T, W]`` word ids (0 = padding) -> ``[B, T, E]``: sum_j l_j * embed(word_j) with the position
    weights ``l_kj = (1 - j/J) - (k/E)(1 - 2j/J)`` (j = 1..J the word position, J the sentence's length,
    k = 1..E the embedding dimension)."""

    def __init__(self, vocab_size: int, embedding_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=0)

    def forward(self, words: Tensor) -> Tensor:
        present = (words != 0).to(self.embedding.weight.dtype)  # [B, T, W]
        length = present.sum(-1, keepdim=True).clamp_min(1.0)  # J per sentence
        position = torch.cumsum(present, -1)  # j = 1..J on the words
        dims = self.embedding.embedding_dim
        k = torch.arange(1, dims + 1, dtype=present.dtype, device=words.device) / dims
        j_over_len = (position / length).unsqueeze(-1)  # [B, T, W, 1]
        weights = (1 - j_over_len) - k * (1 - 2 * j_over_len)  # [B, T, W, E]
        return (weights * present.unsqueeze(-1) * self.embedding(words)).sum(-2)


def make_encoder(spec: InputSpec) -> nn.Module:
    """The encoder for a task's input spec."""
    if isinstance(spec, VectorInput):
        return nn.Identity()
    if isinstance(spec, TokenInput):
        return nn.Embedding(spec.vocab_size, spec.embedding_size)
    if isinstance(spec, SentenceInput):
        return PositionWeightedSentenceEncoder(spec.vocab_size, spec.embedding_size)
    raise TypeError(f"no encoder for input spec {spec!r}")
