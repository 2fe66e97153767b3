"""Relational associative recall, RAR (SAM paper section 3.2, spec table row "RAR").

K items (K ~ U{min_items..max_items}), each a delimiter step (channel ``bits``) followed by L steps of
random bits; then a query delimiter (channel ``bits + 1``), a copy of one of the items, a closing
delimiter (channel ``bits + 1``), then L zero steps during which the model outputs the other item that is
FARTHEST from the query (Euclidean distance between flattened items) if the query's last bit is 1, else
the NEAREST one. Metrics: bit error per sequence and the fraction of items reconstructed perfectly.

The paper preset is K in 2..5 items of L = 3 steps; the authors' run actually used 3 items of random length
2..5 (an argument-order slip, spec), offered as the task ``rar-as-run``. ``one_length_per_batch``: one (K, L)
per training batch, as the authors' ``run_toys.py`` draws them (``base.LengthPerBatchTask``).
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from stm_rl.supervised.tasks.base import (
    Batch, BitOutputTask, LengthPerBatchTask, MetricTotals, Plateau, Sample, VectorInput, check_flag, check_range,
    random_bits, split_rng, wrong_bits,
)


def rar_answer(items: np.ndarray, query_index: int) -> int:
    """Index of the answer item: the farthest other item if the query's last bit is 1, else the nearest.

    ``items`` is ``[K, L, bits]``; the query is ``items[query_index]``. Ties go to the lowest index.
    """
    flat = items.reshape(len(items), -1)
    distances = np.linalg.norm(flat - flat[query_index], axis=1)
    others = [i for i in range(len(items)) if i != query_index]
    key = (lambda i: -distances[i]) if flat[query_index, -1] == 1 else (lambda i: distances[i])
    return min(others, key=lambda i: (key(i), i))


def query_only_answer(items: np.ndarray, query_index: int) -> np.ndarray:
    """The answer guessed from the query alone: the query when it asks for the nearest item (last bit 0), its
    complement when it asks for the farthest."""
    query = items[query_index]
    return 1 - query if query.reshape(-1)[-1] == 1 else query


def bit_vote_answer(items: np.ndarray, query_index: int) -> np.ndarray:
    """The answer guessed without distances: bit by bit, the majority of the other items (ties: query-only)."""
    others = np.delete(items, query_index, axis=0).mean(axis=0)
    return np.where(others > 0.5, 1.0, np.where(others < 0.5, 0.0, query_only_answer(items, query_index)))


SHORTCUT_SAMPLES = 10_000
"""Monte Carlo samples of :meth:`RARTask.plateaus`."""


class RARTask(LengthPerBatchTask, BitOutputTask):
    name = "rar"
    description = "relational associative recall: recall the farthest/nearest item to a query (2..5 items of 3 steps)"
    paper_result = "~1 bit error, 87% items perfect (NTM/DNC/RMC stuck at ~30 bits)"

    def __init__(self, bits: int = 32, min_items: int = 2, max_items: int = 5,
                 min_item_length: int = 3, max_item_length: int = 3, one_length_per_batch: bool = False) -> None:
        check_range("bits", bits, 1)
        check_range("min_items", min_items, 2)
        check_range("max_items", max_items, min_items)
        check_range("min_item_length", min_item_length, 1)
        check_range("max_item_length", max_item_length, min_item_length)
        self.bits = bits
        self.min_items, self.max_items = min_items, max_items
        self.min_item_length, self.max_item_length = min_item_length, max_item_length
        self.one_length_per_batch = check_flag("one_length_per_batch", one_length_per_batch)
        self.input_spec = VectorInput(bits + 2)
        self.output_size = bits

    def draw_lengths(self, rng: np.random.Generator) -> tuple[int, int]:
        """(K items, L steps per item)."""
        return (int(rng.integers(self.min_items, self.max_items + 1)),
                int(rng.integers(self.min_item_length, self.max_item_length + 1)))

    def draw_items(self, rng: np.random.Generator, lengths: tuple[int, int]) -> tuple[np.ndarray, int]:
        """The items ``[K, L, bits]`` of one sample and the index of the query."""
        count, length = lengths
        return random_bits(rng, (count, length, self.bits)), int(rng.integers(count))

    def generate_with(self, rng: np.random.Generator, lengths: tuple[int, int]) -> Sample:
        items, query = self.draw_items(rng, lengths)
        count, length = lengths
        answer = items[rar_answer(items, query)]

        question = (count + 1) * (length + 1) + 1  # K items + the query, each with a delimiter, + closing
        inputs = np.zeros((question + length, self.bits + 2), dtype=np.float32)
        for slot, item in enumerate([*items, items[query]]):
            start = slot * (length + 1)
            inputs[start, self.bits if slot < count else self.bits + 1] = 1.0
            inputs[start + 1 : start + 1 + length, : self.bits] = item
        inputs[question - 1, self.bits + 1] = 1.0  # closing delimiter
        targets = np.zeros((question + length, self.bits), dtype=np.float32)
        targets[question:] = answer
        mask = np.zeros(question + length, dtype=bool)
        mask[question:] = True
        return Sample(inputs, targets, mask)

    def mean_answer_steps(self) -> float:
        return (self.min_item_length + self.max_item_length) / 2

    def plateaus(self) -> list[Plateau]:
        """Chance, then two shortcuts that compare no distances, by a seeded Monte Carlo over this task's items
        (:data:`SHORTCUT_SAMPLES` samples, standard error about 0.02 bits at 8-bit items)."""
        rng = split_rng(0, "shortcut")
        wrong = {"query-only": 0.0, "bit vote": 0.0}
        for _ in range(SHORTCUT_SAMPLES):
            items, query = self.draw_items(rng, self.draw_lengths(rng))
            answer = items[rar_answer(items, query)]
            wrong["query-only"] += float((query_only_answer(items, query) != answer).sum())
            wrong["bit vote"] += float((bit_vote_answer(items, query) != answer).sum())
        return [*super().plateaus(),
                Plateau("query-only", wrong["query-only"] / SHORTCUT_SAMPLES, None,
                        "no item memory: the query itself when it asks for the nearest item, its complement when it "
                        "asks for the farthest"),
                Plateau("bit vote", wrong["bit vote"] / SHORTCUT_SAMPLES, None,
                        "no distances: bit by bit the majority of the items other than the query (ties as "
                        "query-only); exact at K = 2")]

    def metrics(self, outputs: Tensor, batch: Batch) -> MetricTotals:
        wrong = wrong_bits(outputs, batch.targets, batch.mask)
        return {"bit_error": (float(wrong.sum()), float(batch.size)),
                "items_perfect": (float((wrong == 0).sum()), float(batch.size))}


class RARAsRunTask(RARTask):
    name = "rar-as-run"
    description = "RAR as the authors ran it: 3 items of random length 2..5 steps"

    def __init__(self, bits: int = 32, min_items: int = 3, max_items: int = 3,
                 min_item_length: int = 2, max_item_length: int = 5, one_length_per_batch: bool = False) -> None:
        super().__init__(bits, min_items, max_items, min_item_length, max_item_length, one_length_per_batch)
