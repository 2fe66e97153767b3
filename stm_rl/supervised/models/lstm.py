"""LSTM baseline (the SAM paper's "LSTM" rows): a stacked ``nn.LSTM`` and a linear readout."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

DESCRIPTION = "LSTM baseline: stacked LSTM + linear readout"


@dataclass(frozen=True)
class Options:
    """``--model-option`` settings of the LSTM baseline."""

    hidden_size: int
    """Units per LSTM layer."""
    num_layers: int = 1
    """Stacked LSTM layers."""


PRESETS: dict[str, Options] = {"smoke": Options(16), "small": Options(128), "paper": Options(512)}


class LSTMModel(nn.Module):
    def __init__(self, input_size: int, output_size: int, hidden_size: int, num_layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.readout = nn.Linear(hidden_size, output_size)

    def forward(self, x: Tensor) -> Tensor:
        hidden, _ = self.lstm(x)
        return self.readout(hidden)


CORE = LSTMModel
"""The core: ``LSTMModel(input_size, output_size, **fields of Options)``."""
