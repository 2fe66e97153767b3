"""Nth-farthest (Santoro et al. 2018, RMC; SAM paper section 3.3, spec table row "Nth-farthest").

``num_vectors`` vectors U(-1, 1)^dim are shown one per step as ``[vector, one-hot label (a random
permutation), one-hot n, one-hot m]`` (16 + 8 + 8 + 8 = 40 channels at the paper's sizes). At the last
input step the model answers the label of the (n+1)-th farthest vector from the vector labelled m
(n = 0: the farthest), a classification over the labels.
"""

from __future__ import annotations

import math

import numpy as np

from stm_rl.supervised.tasks.base import ClassOutputTask, Plateau, Sample, VectorInput, check_range, one_hot


def nth_farthest_label(vectors: np.ndarray, labels: np.ndarray, n: int, m: int) -> int:
    """Label of the (n+1)-th farthest vector from the vector labelled ``m`` (the reference counts too,
    at distance 0, so it is the last one)."""
    reference = vectors[int(np.flatnonzero(labels == m)[0])]
    distances = np.linalg.norm(vectors - reference, axis=1)
    order = np.argsort(-distances, kind="stable")
    return int(labels[order[n]])


class NthFarthestTask(ClassOutputTask):
    name = "nth-farthest"
    description = "8 labelled vectors in R^16 and (n, m): answer the label of the n-th farthest from m"
    paper_result = "98% accuracy (RMC 91%)"

    def __init__(self, num_vectors: int = 8, dim: int = 16) -> None:
        check_range("num_vectors", num_vectors, 2)
        check_range("dim", dim, 1)
        self.num_vectors, self.dim = num_vectors, dim
        self.input_spec = VectorInput(dim + 3 * num_vectors)
        self.output_size = num_vectors

    def plateaus(self) -> list[Plateau]:
        """With k vectors, n = k - 1 (probability 1/k) asks for the reference itself; otherwise the answer is, by
        symmetry, any of the k - 1 other labels: accuracy 1/k + (k-1)/k x 1/(k-1) = 2/k, cross-entropy
        (k-1)/k ln(k-1) (k = 8: 0.25 and 7/8 ln 7 = 1.703; chance is 1/k = 0.125)."""
        k = self.num_vectors
        return [Plateau("label-only", 2 / k, (k - 1) / k * math.log(k - 1),
                        f"no distances: answer m when n = {k - 1} (the reference itself), one of the other labels "
                        "otherwise")]

    def generate(self, rng: np.random.Generator) -> Sample:
        k = self.num_vectors
        vectors = rng.uniform(-1.0, 1.0, size=(k, self.dim)).astype(np.float32)
        labels = rng.permutation(k)
        n, m = int(rng.integers(k)), int(rng.integers(k))
        inputs = np.concatenate(
            [vectors, np.eye(k, dtype=np.float32)[labels],
             np.tile(one_hot(n, k), (k, 1)), np.tile(one_hot(m, k), (k, 1))], axis=1)
        targets = np.zeros(k, dtype=np.int64)
        targets[-1] = nth_farthest_label(vectors, labels, n, m)
        mask = np.zeros(k, dtype=bool)
        mask[-1] = True
        return Sample(inputs, targets, mask)
