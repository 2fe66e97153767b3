"""Running standardisation of the observed frames, inside the agent (``--normalize-obs``).

``(frame - mean) / (std + 1e-8)``, where ``mean`` and ``std`` are exponential running averages (decay
``alpha`` = 0.9999 per frame, bias-corrected by ``1 - alpha^count``) of each frame's own mean and standard
deviation, as the classic PyTorch A3C's ``NormalizedEnv`` does. The statistics are buffers of the agent, so
checkpoints carry them and a resumed run or an evaluation standardises frames exactly as training did.

Who updates the statistics (Hogwild A3C)
---------------------------------------
The forward passes only *read* them. Each worker calls :meth:`FrameNormalizer.update` on the **shared**
model's normaliser (whose buffers live in shared memory), once with its first observations and then once per
rollout with the frames it acted on; it never updates its local copy, which takes the shared statistics with
the weights at the next sync. So acting and the replay of a rollout use the same statistics (the replay gives
the numbers the actions were sampled from), and all workers feed one set of statistics. The updates are
lock-free, like Hogwild's parameter updates: two workers updating at the same instant may lose one of the
two contributions, which a running average over tens of thousands of frames does not notice. Evaluation
(``stm-rl evaluate``, the in-training evaluator) never updates.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

EPSILON = 1e-8
"""Added to the standard deviation, as in the classic implementation."""


class FrameNormalizer(nn.Module):
    """Standardises frames ``[..., 1, S, S]`` by running averages of per-frame mean and std (module docstring)."""

    def __init__(self, alpha: float = 0.9999) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        self.alpha = alpha
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("std", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def statistics(self) -> tuple[float, float]:
        """The bias-corrected running mean and std; ``(0, 1)`` (no change) before any frame was seen."""
        count = int(self.count)
        if count == 0:
            return 0.0, 1.0
        correction = 1.0 - self.alpha ** count
        return float(self.mean) / correction, float(self.std) / correction

    def statistics_on_device(self) -> tuple[Tensor, Tensor]:
        """:meth:`statistics` as 0-dimensional float64 tensors where the buffers live: no copy to the host."""
        correction = 1.0 - torch.pow(torch.full_like(self.mean, self.alpha), self.count)  # 0 before any frame
        seen = self.count > 0
        return (torch.where(seen, self.mean / correction, torch.zeros_like(self.mean)),
                torch.where(seen, self.std / correction, torch.ones_like(self.std)))

    def forward(self, frames: Tensor) -> Tensor:
        # Python numbers on the CPU (the cheapest there); tensors elsewhere, where reading a buffer's value
        # would wait for the accelerator at every step. Either way the arithmetic is in the frames' dtype.
        mean, std = self.statistics() if self.mean.device.type == "cpu" else self.statistics_on_device()
        return (frames - mean) / (std + EPSILON)

    @torch.no_grad()
    def update(self, frames: Tensor) -> None:
        """Fold ``frames [..., 1, S, S]`` into the running averages, in row-major order of the leading
        dimensions: the same result as one decay step per frame, in one write of each buffer."""
        pixels = frames.detach().flatten(-3)  # [..., S*S]
        means = pixels.mean(-1).flatten().to(torch.float64)
        stds = pixels.std(-1, correction=0).flatten().to(torch.float64)
        n = means.numel()
        if n == 0:
            return
        # n steps of x <- alpha * x + (1 - alpha) * m_i give alpha^n * x + (1 - alpha) * sum_i alpha^(n-1-i) m_i.
        weights = (1.0 - self.alpha) * self.alpha ** torch.arange(n - 1, -1, -1, dtype=torch.float64)
        decay = self.alpha ** n
        self.mean.mul_(decay).add_(weights @ means)
        self.std.mul_(decay).add_(weights @ stds)
        self.count.add_(n)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
