"""Convex hull (Vinyals et al. 2015; SAM paper section 3.3, spec table row "convex hull").

N points U[0, 1]^2 in the :mod:`geometry` encoding (training N ~ U{min_points..max_points}, the paper's
5..20; validation and test at a fixed N, the paper's 5 or 10), then the hull's features in
counter-clockwise order starting from the lowest input index, then END. Metrics: per-step accuracy (the
paper's) and exact-sequence accuracy. ``test_labels="position"`` labels validation/test points by their
input position, as the authors' test sets do (the ``paper`` preset's default); "random" labels them like
the training points, which makes the test harder than the paper's.
"""

from __future__ import annotations

import numpy as np

from stm_rl.supervised.tasks.base import (
    AnswerSequenceTask, Batch, Sample, VectorInput, answer_sequence_sample, check_range, collate, split_rng,
)
from stm_rl.supervised.tasks.geometry import check_test_labels, convex_hull, encode_points, point_features


class ConvexHullTask(AnswerSequenceTask):
    name = "convex-hull"
    description = "points in the unit square (train N in 5..20, test N=test_points): output the hull CCW, then END"
    paper_result = "per-step accuracy 96.85% (N=5), 91.88% (N=10)"

    def __init__(self, min_points: int = 5, max_points: int = 20, test_points: int = 10, n_max: int = 20,
                 test_labels: str = "random") -> None:
        check_test_labels(test_labels)
        check_range("min_points", min_points, 3)
        check_range("max_points", max_points, min_points, n_max)
        check_range("test_points", test_points, 3, n_max)
        super().__init__(n_max)
        self.min_points, self.max_points, self.test_points = min_points, max_points, test_points
        self.test_labels = test_labels
        self.input_spec = VectorInput(3 + n_max)

    def generate(self, rng: np.random.Generator, count: int | None = None, by_position: bool = False) -> Sample:
        if count is None:
            count = int(rng.integers(self.min_points, self.max_points + 1))
        points = rng.uniform(0.0, 1.0, size=(count, 2)).astype(np.float32)
        features = point_features(rng, count, self.n_max, by_position)
        hull = convex_hull(points)
        return answer_sequence_sample(encode_points(points, features, self.n_max),
                                      [int(features[i]) for i in hull], self.end_class)

    def dataset(self, split: str, size: int, seed: int) -> Batch:
        rng = split_rng(seed, split)
        if split == "train":
            return collate([self.generate(rng) for _ in range(size)])
        by_position = self.test_labels == "position"
        return collate([self.generate(rng, self.test_points, by_position) for _ in range(size)])
