"""Copy (NTM paper; SAM paper section 3.2, spec table row "copy").

A start flag step (channel ``bits``), L ~ U{min_length..max_length} random bit vectors, an end flag
step (channel ``bits + 1``), then L all-zero steps during which the model must output the L vectors.
``one_length_per_batch``: one L per training batch, as the authors' ``run_toys.py`` draws it
(``base.LengthPerBatchTask``).
"""

from __future__ import annotations

import numpy as np

from stm_rl.supervised.tasks.base import (
    BitOutputTask, LengthPerBatchTask, Sample, VectorInput, check_flag, check_range, random_bits,
)


class CopyTask(LengthPerBatchTask, BitOutputTask):
    name = "copy"
    description = "copy L ~ U{1..20} vectors of 32 random bits after an end flag (bit error per sequence)"
    paper_result = "~0 bits error per sequence"

    def __init__(self, bits: int = 32, min_length: int = 1, max_length: int = 20,
                 one_length_per_batch: bool = False) -> None:
        check_range("bits", bits, 1)
        check_range("min_length", min_length, 1)
        check_range("max_length", max_length, min_length)
        self.bits, self.min_length, self.max_length = bits, min_length, max_length
        self.one_length_per_batch = check_flag("one_length_per_batch", one_length_per_batch)
        self.input_spec = VectorInput(bits + 2)
        self.output_size = bits

    def mean_answer_steps(self) -> float:
        return (self.min_length + self.max_length) / 2

    def draw_lengths(self, rng: np.random.Generator) -> tuple[int]:
        return (int(rng.integers(self.min_length, self.max_length + 1)),)

    def generate_with(self, rng: np.random.Generator, lengths: tuple[int]) -> Sample:
        (length,) = lengths
        data = random_bits(rng, (length, self.bits))
        inputs = np.zeros((2 * length + 2, self.bits + 2), dtype=np.float32)
        inputs[0, self.bits] = 1.0  # start flag
        inputs[1 : length + 1, : self.bits] = data
        inputs[length + 1, self.bits + 1] = 1.0  # end flag; the answer steps stay zero
        targets = np.zeros((2 * length + 2, self.bits), dtype=np.float32)
        targets[length + 2 :] = data
        mask = np.zeros(2 * length + 2, dtype=bool)
        mask[length + 2 :] = True
        return Sample(inputs, targets, mask)
