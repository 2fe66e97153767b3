"""Travelling salesman (Vinyals et al. 2015; SAM paper section 3.3, spec table row "TSP").

N cities U[0, 1]^2 in the :mod:`geometry` encoding, then the exact optimal closed tour (Held-Karp) as
city features from the first input city, in the direction whose second city has the lower input index,
then END. Metrics: per-step accuracy, and the mean length of the predicted tours that are valid
(a permutation of the cities), with the valid fraction and the optimal length for reference.
``test_labels="position"`` labels validation/test cities by their input position, as the authors' test
sets do (the ``paper`` preset's default); "random" labels them like the training cities.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from stm_rl.supervised.tasks.base import (
    AnswerSequenceTask, Batch, MetricTotals, VectorInput, answer_sequence_sample, check_range, collate, split_rng,
)
from stm_rl.supervised.tasks.geometry import check_test_labels, encode_points, optimal_tours, point_features, tour_length

MAX_EXACT_CITIES = 12  # Held-Karp memory and time grow as 2^N N^2


class TSPTask(AnswerSequenceTask):
    name = "tsp-5"
    description = "N cities in the unit square (N=5 or 10): output the optimal tour from the first city, then END"
    paper_result = "per-step accuracy 73.96% / tour 2.05 (N=5), 69.43% / 3.03 (N=10)"

    def __init__(self, num_cities: int = 5, n_max: int = 20, test_labels: str = "random") -> None:
        check_test_labels(test_labels)
        check_range("num_cities", num_cities, 3, min(n_max, MAX_EXACT_CITIES))
        super().__init__(n_max)
        self.num_cities, self.test_labels = num_cities, test_labels
        self.input_spec = VectorInput(3 + n_max)

    def sample(self, batch_size: int, rng: np.random.Generator, by_position: bool = False) -> Batch:
        points = rng.uniform(0.0, 1.0, size=(batch_size, self.num_cities, 2)).astype(np.float32)
        features = [point_features(rng, self.num_cities, self.n_max, by_position) for _ in range(batch_size)]
        tours = optimal_tours(points.astype(np.float64))
        return collate([
            answer_sequence_sample(encode_points(p, f, self.n_max), [int(f[c]) for c in tour], self.end_class,
                                   extras={"points": p, "features": f, "optimal_length": tour_length(p, tour)})
            for p, f, tour in zip(points, features, tours)
        ])

    def dataset(self, split: str, size: int, seed: int) -> Batch:
        by_position = split != "train" and self.test_labels == "position"
        return self.sample(size, split_rng(seed, split), by_position)

    def metrics(self, outputs: Tensor, batch: Batch) -> MetricTotals:
        result = super().metrics(outputs, batch)
        predictions = outputs.argmax(-1).cpu().numpy()
        mask = batch.mask.cpu().numpy()
        valid, total_length = 0, 0.0
        for b in range(batch.size):
            predicted = predictions[b][mask[b]][: self.num_cities]
            position = {int(f): i for i, f in enumerate(batch.extras["features"][b])}
            tour = [position.get(int(f), -1) for f in predicted]
            if sorted(tour) == list(range(self.num_cities)):
                valid += 1
                total_length += tour_length(batch.extras["points"][b], tour)
        result["tour_length"] = (total_length, float(valid))
        result["valid_tours"] = (float(valid), float(batch.size))
        result["optimal_tour_length"] = (float(batch.extras["optimal_length"].sum()), float(batch.size))
        return result


class TSP10Task(TSPTask):
    name = "tsp-10"
    description = "TSP with N=10 cities"
    paper_result = "per-step accuracy 69.43%, tour 3.03"

    def __init__(self, num_cities: int = 10, n_max: int = 20, test_labels: str = "random") -> None:
        super().__init__(num_cities, n_max, test_labels)
