"""Convolutional encoders of Pong frames (spec: ../shared/spec/A3C_PONG.md, "Agents").

The encoders run in the channels-last memory layout (weights and activations), where oneDNN's CPU
convolutions are fastest: the paper encoder's forward+backward per frame is 2-3x faster than in the
default layout, in fp32 and in bf16 alike (issue 10: at batch 320, 4.4 -> 2.0 ms fp32). The layout changes
no number: the flattened features keep the channel-major order of the default layout.

On the CPU a batch of frames goes through an encoder ``cpu_frames_per_call`` frames at a time. In fp32, oneDNN's
convolutions slow down by a third to a half once the first layer's output reaches a few hundred MB in one
call, as in the replay of a large rollout (issue 10, forward and backward, one thread: the small encoder on
5,120 frames, 289 MB, 829 ms in one call against 531 in calls of 640 or 1,280; the paper encoder on 640
frames, 524 MB, 1,558 ms against 1,164 in calls of 256 or 160). At 145 MB (small) and 262 MB (paper) one call
is as fast, and bf16 is not affected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PaperEncoder(nn.Sequential):
    """The paper's encoder (the authors' "A3C-LSTM"): 1 x 80 x 80 -> 1024.

    Four conv + max-pool(2) + ReLU blocks: 32 5x5 pad 2, 32 5x5 pad 1, 64 4x4 pad 1, 64 3x3 pad 1.
    """

    input_size = 80
    output_size = 1024
    cpu_frames_per_call = 256  # first layer's output: 210 MB in fp32

    def __init__(self) -> None:
        def block(c_in: int, c_out: int, kernel: int, pad: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel, stride=1, padding=pad), nn.MaxPool2d(2), nn.ReLU()]

        super().__init__(*block(1, 32, 5, 2), *block(32, 32, 5, 1), *block(32, 64, 4, 1), *block(64, 64, 3, 1),
                         nn.Flatten())


class SmallEncoder(nn.Sequential):
    """The small encoder of the universe-starter / classic PyTorch A3C agents: 1 x 42 x 42 -> 288.

    Four conv 32 3x3 stride 2 pad 1 with ELU (:class:`torch.nn.ELU`, alpha 1); about 6x cheaper than
    :class:`PaperEncoder` on a CPU.
    """

    input_size = 42
    output_size = 288
    cpu_frames_per_call = 1024  # first layer's output: 58 MB in fp32

    def __init__(self) -> None:
        layers: list[nn.Module] = []
        for c_in in (1, 32, 32, 32):
            layers += [nn.Conv2d(c_in, 32, 3, stride=2, padding=1), nn.ELU()]
        super().__init__(*layers, nn.Flatten())


ENCODERS: dict[str, type[nn.Sequential]] = {"paper": PaperEncoder, "small": SmallEncoder}


def make_encoder(name: str) -> nn.Sequential:
    """``"paper"`` (80 x 80 input) or ``"small"`` (42 x 42 input), with channels-last weights."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name]().to(memory_format=torch.channels_last)


def encode_frames(encoder: nn.Module, frames: Tensor) -> Tensor:
    """Encode frames with any leading dimensions ``[..., 1, S, S]`` -> ``[..., F]``: one batched call, or on
    the CPU one call per ``encoder.cpu_frames_per_call`` frames where the encoder sets it (the same numbers)."""
    lead = frames.shape[:-3]
    batch = frames.reshape(-1, *frames.shape[-3:]).contiguous(memory_format=torch.channels_last)
    per_call = getattr(encoder, "cpu_frames_per_call", None)
    if batch.device.type != "cpu" or per_call is None or batch.shape[0] <= per_call:
        return encoder(batch).view(*lead, -1)
    return torch.cat([encoder(part) for part in batch.split(per_call)]).view(*lead, -1)
