"""Attentional LSTM baseline (the SAM paper's "ALSTM"): an LSTM whose readout at step t also sees a
causal dot-product attention over its own hidden states ``h_1..h_t`` (Bahdanau-style memory of the past,
as in the paper's comparison; nothing attends to the future, so answers never see padding)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

DESCRIPTION = "attentional LSTM baseline: LSTM + causal attention over its past hidden states"


@dataclass(frozen=True)
class Options:
    """``--model-option`` settings of the attentional LSTM."""

    hidden_size: int
    """LSTM units (also the size of the attention's queries and keys)."""


PRESETS: dict[str, Options] = {"smoke": Options(16), "small": Options(128), "paper": Options(512)}


class AttentionLSTM(nn.Module):
    def __init__(self, input_size: int, output_size: int, hidden_size: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.readout = nn.Linear(2 * hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(x)  # [B, T, H]
        scores = self.query(hidden) @ hidden.transpose(1, 2) / hidden.shape[-1] ** 0.5  # [B, T(query), T(key)]
        steps = hidden.shape[1]
        future = torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(1)
        context = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ hidden
        return self.readout(torch.cat([hidden, context], dim=-1))


CORE = AttentionLSTM
"""The core: ``AttentionLSTM(input_size, output_size, **fields of Options)``."""
