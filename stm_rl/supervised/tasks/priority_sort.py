"""Priority sort (NTM paper; spec table row "priority sort").

``num_items`` random bit vectors, each with a priority U[-1, 1) in channel ``bits``; then one delimiter
step (channel ``bits + 1``; the spec leaves the delimiter open, ours marks where the answer starts), then
``num_outputs`` zero steps during which the model outputs the highest-priority vectors, highest first.
"""

from __future__ import annotations

import numpy as np

from stm_rl.supervised.tasks.base import BitOutputTask, Sample, VectorInput, check_range, random_bits


def sort_by_priority(items: np.ndarray, priorities: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` items of highest priority, highest first (stable for ties)."""
    order = np.argsort(-priorities, kind="stable")[:count]
    return items[order]


class PrioritySortTask(BitOutputTask):
    name = "priority-sort"
    description = "output the 16 highest-priority of 20 bit vectors, highest first (bit error per sequence)"
    paper_result = "~0 bits error per sequence"

    def __init__(self, bits: int = 32, num_items: int = 20, num_outputs: int = 16) -> None:
        check_range("bits", bits, 1)
        check_range("num_items", num_items, 1)
        check_range("num_outputs", num_outputs, 1, num_items)
        self.bits, self.num_items, self.num_outputs = bits, num_items, num_outputs
        self.input_spec = VectorInput(bits + 2)
        self.output_size = bits

    def mean_answer_steps(self) -> float:
        return float(self.num_outputs)

    def generate(self, rng: np.random.Generator) -> Sample:
        n, k = self.num_items, self.num_outputs
        items = random_bits(rng, (n, self.bits))
        priorities = rng.uniform(-1.0, 1.0, size=n).astype(np.float32)
        steps = n + 1 + k
        inputs = np.zeros((steps, self.bits + 2), dtype=np.float32)
        inputs[:n, : self.bits] = items
        inputs[:n, self.bits] = priorities
        inputs[n, self.bits + 1] = 1.0
        targets = np.zeros((steps, self.bits), dtype=np.float32)
        targets[n + 1 :] = sort_by_priority(items, priorities, k)
        mask = np.zeros(steps, dtype=bool)
        mask[n + 1 :] = True
        return Sample(inputs, targets, mask)
