"""Convolutional encoders of Pong frames (spec: ../shared/spec/A3C_PONG.md, "Agents").

The encoders run in the channels-last memory layout (weights and activations), where oneDNN's CPU
convolutions are fastest: the paper encoder's forward+backward per frame is 2-3x faster than in the
default layout, in fp32 and in bf16 alike (issue 10: at batch 320, 4.4 -> 2.0 ms fp32). The layout changes
no number: the flattened features keep the channel-major order of the default layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from agents.elu import ELU


class PaperEncoder(nn.Sequential):
    """The paper's encoder (the authors' "A3C-LSTM"): 1 x 80 x 80 -> 1024.

    Four conv + max-pool(2) + ReLU blocks: 32 5x5 pad 2, 32 5x5 pad 1, 64 4x4 pad 1, 64 3x3 pad 1.
    """

    input_size = 80
    output_size = 1024

    def __init__(self) -> None:
        def block(c_in: int, c_out: int, kernel: int, pad: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel, stride=1, padding=pad), nn.MaxPool2d(2), nn.ReLU()]

        super().__init__(*block(1, 32, 5, 2), *block(32, 32, 5, 1), *block(32, 64, 4, 1), *block(64, 64, 3, 1),
                         nn.Flatten())


class SmallEncoder(nn.Sequential):
    """The small encoder of the universe-starter / classic PyTorch A3C agents: 1 x 42 x 42 -> 288.

    Four conv 32 3x3 stride 2 pad 1 with ELU (:class:`agents.elu.ELU`, a faster CPU kernel of the same function);
    about 6x cheaper than :class:`PaperEncoder` on a CPU.
    """

    input_size = 42
    output_size = 288

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        for c_in in (1, 32, 32, 32):
            layers += [nn.Conv2d(c_in, 32, 3, stride=2, padding=1), ELU()]
        super().__init__(*layers, nn.Flatten())


ENCODERS: dict[str, type[nn.Sequential]] = {"paper": PaperEncoder, "small": SmallEncoder}


def make_encoder(name: str) -> nn.Sequential:
    """``"paper"`` (80 x 80 input) or ``"small"`` (42 x 42 input), with channels-last weights."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name]().to(memory_format=torch.channels_last)


CPU_FRAMES_PER_CALL = 1024
"""Frames per encoder call on the CPU. oneDNN's fp32 convolutions of the small encoder slow down by half
past a few thousand frames in one batch: a 256-game rollout replayed in one call (5,120 frames) took 829 ms
forward and backward, against 531 ms in calls of 640 or 1,280 frames; 2,560 frames are as fast either way,
and bf16 is not affected (issue 10). GPUs take the whole batch."""


def encode_frames(encoder: nn.Module, frames: Tensor) -> Tensor:
    """Encode frames with any leading dimensions ``[..., 1, S, S]`` -> ``[..., F]``: one batched call, or on
    the CPU one call per :data:`CPU_FRAMES_PER_CALL` frames (the same numbers)."""
    lead = frames.shape[:-3]
    batch = frames.reshape(-1, *frames.shape[-3:]).contiguous(memory_format=torch.channels_last)
    if batch.device.type != "cpu" or batch.shape[0] <= CPU_FRAMES_PER_CALL:
        return encoder(batch).view(*lead, -1)
    return torch.cat([encoder(part) for part in batch.split(CPU_FRAMES_PER_CALL)]).view(*lead, -1)
