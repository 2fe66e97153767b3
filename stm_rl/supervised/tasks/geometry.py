"""Planar point sets for the geometry tasks (convex hull, TSP; Vinyals et al. 2015 pointer-network data,
SAM paper section 3.3): the input encoding they share and exact solvers for their targets.

Every point is one input step ``[x, y, end-of-input flag, one-hot feature of n_max]``; in training the
features are a random permutation of ``0 .. n_max - 1`` per sample, so answers name points by feature, not
by position. Validation and test sets can instead label the points by their input position (feature i for
the i-th point; ``test_labels="position"``), as the SAM authors' test sets do. After the points comes one
step whose only non-zero entry is the end-of-input flag.
"""

from __future__ import annotations

import itertools

import numpy as np

from stm_rl.supervised.tasks.base import random_features

TEST_LABELINGS = ("random", "position")
"""How validation/test points are labelled: "random" like training, or "position" (the authors' test sets)."""


def check_test_labels(test_labels: str) -> None:
    if test_labels not in TEST_LABELINGS:
        raise ValueError(f"test_labels must be one of {', '.join(TEST_LABELINGS)}, got {test_labels!r}")


def point_features(rng: np.random.Generator, count: int, n_max: int, by_position: bool) -> np.ndarray:
    """The features of ``count`` points: ``0 .. count - 1`` in input order if ``by_position``, else random
    distinct features of ``0 .. n_max - 1``."""
    return np.arange(count) if by_position else random_features(rng, count, n_max)


def encode_points(points: np.ndarray, features: np.ndarray, n_max: int) -> np.ndarray:
    """The input steps ``[N + 1, 3 + n_max]``: one per point, then the end-of-input step."""
    steps = np.zeros((len(points) + 1, 3 + n_max), dtype=np.float32)
    steps[:-1, :2] = points
    steps[np.arange(len(points)), 3 + features] = 1.0
    steps[-1, 2] = 1.0
    return steps


def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """z of (a - o) x (b - o): > 0 for a counter-clockwise turn o -> a -> b."""
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def convex_hull(points: np.ndarray) -> list[int]:
    """Indices of the convex hull's vertices in counter-clockwise order starting from the lowest index
    (Andrew's monotone chain; collinear boundary points are not vertices)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    if len(order) < 3:
        return sorted(order)

    def chain(indices):
        hull: list[int] = []
        for i in indices:
            while len(hull) >= 2 and cross(points[hull[-2]], points[hull[-1]], points[i]) <= 0:
                hull.pop()
            hull.append(i)
        return hull

    lower, upper = chain(order), chain(reversed(order))
    hull = lower[:-1] + upper[:-1]
    start = hull.index(min(hull))
    return hull[start:] + hull[:start]


def distance_matrix(points: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[..., N, N]`` between points ``[..., N, 2]``."""
    return np.linalg.norm(points[..., :, None, :] - points[..., None, :, :], axis=-1)


def tour_length(points: np.ndarray, tour) -> float:
    """Length of the closed tour visiting ``points`` in the order ``tour`` and returning to its start."""
    tour = list(tour)
    return float(sum(np.linalg.norm(points[a] - points[b]) for a, b in zip(tour, tour[1:] + tour[:1])))


def canonical_tour(tour: list[int]) -> list[int]:
    """The tour from city 0 in the direction whose second city has the lower index (a closed tour and
    its reverse have the same length; the target must be one of them)."""
    start = tour.index(0)
    tour = tour[start:] + tour[:start]
    return tour if len(tour) < 3 or tour[1] < tour[-1] else [0] + tour[1:][::-1]


def optimal_tours(points: np.ndarray) -> list[list[int]]:
    """Exact shortest closed tours for a batch ``[B, N, 2]`` (Held-Karp dynamic programming over subsets,
    vectorised over the batch: O(2^N N^2)), each in :func:`canonical_tour` form."""
    batch, n = points.shape[:2]
    if n <= 3:
        return [canonical_tour(list(range(n))) for _ in range(batch)]
    dist = distance_matrix(points)
    others = n - 1  # city 0 is the start; subsets are bitmasks over cities 1 .. n-1 (bit c-1 = city c)
    cost = np.full((batch, 1 << others, n), np.inf)
    parent = np.zeros((1 << others, n, batch), dtype=np.int64)
    for c in range(1, n):
        cost[:, 1 << (c - 1), c] = dist[:, 0, c]
    for subset in range(1, 1 << others):
        members = np.array([c for c in range(1, n) if subset >> (c - 1) & 1])
        if len(members) < 2:
            continue
        previous = subset ^ (1 << (members - 1))  # subset without j, for each member j
        # candidates[b, j, k] = cost(previous_j ending at k) + dist(k, j)
        candidates = cost[:, previous[:, None], members[None, :]] + dist[:, members][:, :, members].transpose(0, 2, 1)
        best = candidates.argmin(axis=2)
        cost[:, subset, members] = np.take_along_axis(candidates, best[:, :, None], axis=2)[:, :, 0]
        parent[subset, members] = members[best].T
    full = (1 << others) - 1
    closing = cost[:, full, :] + dist[:, :, 0]
    tours = []
    for b in range(batch):
        last, subset, tour = int(closing[b, 1:].argmin()) + 1, full, []
        while last != 0:
            tour.append(last)
            last, subset = (int(parent[subset, last, b]) if subset != 1 << (last - 1) else 0), subset ^ (1 << (last - 1))
        tours.append(canonical_tour([0] + tour[::-1]))
    return tours


def brute_force_tour(points: np.ndarray) -> list[int]:
    """Reference solver: the shortest closed tour over all orders (tests only; N <= 9)."""
    best = min(itertools.permutations(range(1, len(points))), key=lambda p: tour_length(points, (0, *p)))
    return canonical_tour([0, *best])
