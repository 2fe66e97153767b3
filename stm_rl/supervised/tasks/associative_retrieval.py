"""Associative retrieval (Ba et al. 2016 "fast weights"; SAM paper section 3.1, spec table row 1).

K key-value pairs (distinct letters a-z as keys, digits 0-9 as values), then ``?``, ``?`` and a query
letter, one token per step; the model answers the digit bound to the query after the last token. The
vocabulary has 37 tokens (26 letters, 10 digits, ``?``), embedded to 100-d by the model's input encoder.
K = 14 gives sequences of 31 tokens ("length 30"), K = 24 gives 51 ("length 50").
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterator

import numpy as np

from stm_rl.supervised.tasks.base import ClassOutputTask, Plateau, Sample, TokenInput, check_range

LETTERS = 26
DIGITS = 10
QUESTION_MARK = LETTERS + DIGITS
VOCAB_SIZE = LETTERS + DIGITS + 1


def letter_token(letter: int) -> int:
    return letter


def digit_token(digit: int) -> int:
    return LETTERS + digit


def decode_tokens(tokens: np.ndarray) -> str:
    """Human-readable form of a token sequence, e.g. ``"a1b7??a"`` (for tests and debugging)."""
    chars = []
    for token in tokens:
        if token < LETTERS:
            chars.append(chr(ord("a") + int(token)))
        elif token < LETTERS + DIGITS:
            chars.append(str(int(token) - LETTERS))
        else:
            chars.append("?")
    return "".join(chars)


def partitions(total: int, parts: int, largest: int | None = None) -> Iterator[tuple[int, ...]]:
    """The ways to write ``total`` as a sum of at most ``parts`` positive integers, largest first."""
    if total == 0:
        yield ()
        return
    for first in range(min(total, total if largest is None else largest), 0, -1):
        if parts > 0:
            for rest in partitions(total - first, parts - 1, first):
                yield (first, *rest)


def most_frequent_value_plateau(num_pairs: int, values: int = DIGITS) -> tuple[float, float]:
    """Accuracy and cross-entropy of answering without the query, from the K = ``num_pairs`` values shown
    (i.i.d. uniform over ``values`` digits), computed exactly over the partitions of K.

    The best such predictor puts probability c_v / K on digit v (c_v: how often v is among the K values; the
    query picks one of the K pairs uniformly), so its accuracy is E[max_v c_v] / K (answer the most frequent
    digit) and its cross-entropy E[-sum_v c_v/K ln(c_v/K)]. A partition (c_1 >= c_2 >= ...) of K has probability
    K! / prod c_i! x values! / ((values - len)! prod_j m_j!) / values^K (m_j: how many parts are equal)."""
    accuracy = cross_entropy = 0.0
    for counts in partitions(num_pairs, values):
        sequences = math.factorial(num_pairs) / math.prod(math.factorial(c) for c in counts)
        digits = math.perm(values, len(counts)) / math.prod(math.factorial(m) for m in Counter(counts).values())
        probability = sequences * digits / values ** num_pairs
        accuracy += probability * counts[0] / num_pairs
        cross_entropy -= probability * sum(c / num_pairs * math.log(c / num_pairs) for c in counts)
    return accuracy, cross_entropy


class AssociativeRetrievalTask(ClassOutputTask):
    name = "associative-retrieval-30"
    description = "K letter-digit pairs, '??', a letter: answer its digit (K=14: length 30, K=24: length 50)"
    paper_result = "100% accuracy (10 epochs at length 30, 20 epochs at length 50)"

    def __init__(self, num_pairs: int = 14, embedding_size: int = 100) -> None:
        check_range("num_pairs", num_pairs, 1, LETTERS)
        self.num_pairs = num_pairs
        self.input_spec = TokenInput(VOCAB_SIZE, embedding_size)
        self.output_size = DIGITS

    @property
    def sequence_length(self) -> int:
        return 2 * self.num_pairs + 3

    def plateaus(self) -> list[Plateau]:
        accuracy, cross_entropy = most_frequent_value_plateau(self.num_pairs)
        return [Plateau("key-blind", accuracy, cross_entropy,
                        f"no binding: answer the most frequent of the {self.num_pairs} digits shown, whatever the "
                        f"query (chance is {1 / DIGITS:.2f})")]

    def generate(self, rng: np.random.Generator) -> Sample:
        keys = rng.choice(LETTERS, size=self.num_pairs, replace=False)
        values = rng.integers(0, DIGITS, size=self.num_pairs)
        query = int(rng.integers(self.num_pairs))
        tokens = np.empty(self.sequence_length, dtype=np.int64)
        tokens[0 : 2 * self.num_pairs : 2] = [letter_token(k) for k in keys]
        tokens[1 : 2 * self.num_pairs : 2] = [digit_token(v) for v in values]
        tokens[-3:-1] = QUESTION_MARK
        tokens[-1] = letter_token(int(keys[query]))
        targets = np.zeros(self.sequence_length, dtype=np.int64)
        targets[-1] = values[query]
        mask = np.zeros(self.sequence_length, dtype=bool)
        mask[-1] = True
        return Sample(tokens, targets, mask)


class AssociativeRetrieval50Task(AssociativeRetrievalTask):
    name = "associative-retrieval-50"
    description = "associative retrieval with K=24 pairs (length 50)"
    paper_result = "100% accuracy in 20 epochs"

    def __init__(self, num_pairs: int = 24, embedding_size: int = 100) -> None:
        super().__init__(num_pairs, embedding_size)
