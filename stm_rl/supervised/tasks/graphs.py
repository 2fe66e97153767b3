"""Random weighted graphs for the graph tasks (shortest path, minimum spanning tree): generation, the input
encoding they share and exact solvers (Dijkstra, Kruskal).

The SAM paper (section 3.3, after Graves et al. 2016) gives no generator and the authors' code has none;
this format is ours (``docs/supervised.md``):

- a graph has N ~ U{min_nodes..max_nodes} nodes; a random spanning tree makes it connected and every
  other pair is an edge with probability ``edge_probability``; weights are U(0, 1) (ties have probability 0,
  so shortest paths and minimum spanning trees are unique);
- nodes carry random distinct features from ``0 .. n_max - 1`` (n_max = max_nodes), and answers name nodes
  by feature;
- every edge is one input step ``[one-hot feature(u), one-hot feature(v), weight, query flag]`` in random
  order and random direction; then one query step ``[one-hot source, one-hot target, 0, 1]`` (all zeros but
  the flag when the task has no query).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from stm_rl.supervised.tasks.base import AnswerSequenceTask, VectorInput, check_range, random_features


@dataclass
class Graph:
    """An undirected weighted graph on nodes ``0 .. num_nodes - 1``."""

    num_nodes: int
    edges: list[tuple[int, int, float]]
    """``(u, v, weight)`` with ``u < v``, no duplicates."""

    def neighbours(self) -> list[list[tuple[int, float]]]:
        adjacency: list[list[tuple[int, float]]] = [[] for _ in range(self.num_nodes)]
        for u, v, w in self.edges:
            adjacency[u].append((v, w))
            adjacency[v].append((u, w))
        return adjacency


def random_connected_graph(rng: np.random.Generator, min_nodes: int, max_nodes: int,
                           edge_probability: float) -> Graph:
    """A random spanning tree (each node joins a random earlier node) plus random extra edges."""
    check_range("min_nodes", min_nodes, 2)
    n = int(rng.integers(min_nodes, max_nodes + 1))
    pairs = {tuple(sorted((v, int(rng.integers(v))))) for v in range(1, n)}
    for u in range(n):
        for v in range(u + 1, n):
            if (u, v) not in pairs and rng.random() < edge_probability:
                pairs.add((u, v))
    edges = [(u, v, float(rng.uniform(0.0, 1.0))) for u, v in sorted(pairs)]
    return Graph(n, edges)


def encode_graph(graph: Graph, features: np.ndarray, n_max: int, rng: np.random.Generator,
                 query: tuple[int, int] | None) -> np.ndarray:
    """The input steps ``[E + 1, 2 n_max + 2]``: the edges in random order and direction, then the query."""
    steps = np.zeros((len(graph.edges) + 1, 2 * n_max + 2), dtype=np.float32)
    for row, index in enumerate(rng.permutation(len(graph.edges))):
        u, v, weight = graph.edges[index]
        if rng.random() < 0.5:
            u, v = v, u
        steps[row, features[u]] = 1.0
        steps[row, n_max + features[v]] = 1.0
        steps[row, 2 * n_max] = weight
    if query is not None:
        steps[-1, features[query[0]]] = 1.0
        steps[-1, n_max + features[query[1]]] = 1.0
    steps[-1, 2 * n_max + 1] = 1.0
    return steps


def shortest_path(graph: Graph, source: int, target: int) -> list[int]:
    """Nodes of the lightest path from ``source`` to ``target`` (Dijkstra with a binary heap)."""
    adjacency = graph.neighbours()
    best = {source: 0.0}
    previous: dict[int, int] = {}
    heap = [(0.0, source)]
    done = set()
    while heap:
        dist, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if node == target:
            break
        for neighbour, weight in adjacency[node]:
            candidate = dist + weight
            if candidate < best.get(neighbour, float("inf")):
                best[neighbour] = candidate
                previous[neighbour] = node
                heapq.heappush(heap, (candidate, neighbour))
    if target not in done:
        raise ValueError(f"node {target} is not reachable from node {source}")
    path = [target]
    while path[-1] != source:
        path.append(previous[path[-1]])
    return path[::-1]


def minimum_spanning_tree(graph: Graph) -> list[tuple[int, int]]:
    """The tree's edges ``(u, v)`` (``u < v``) in the order Kruskal's algorithm adds them (increasing
    weight), found with a union-find."""
    parent = list(range(graph.num_nodes))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tree = []
    for u, v, _ in sorted(graph.edges, key=lambda e: e[2]):
        ru, rv = root(u), root(v)
        if ru != rv:
            parent[ru] = rv
            tree.append((u, v))
    return tree


class GraphTask(AnswerSequenceTask):
    """Shared options of the graph tasks: graph sizes and density."""

    def __init__(self, min_nodes: int = 5, max_nodes: int = 10, edge_probability: float = 0.3) -> None:
        check_range("min_nodes", min_nodes, 2)
        check_range("max_nodes", max_nodes, min_nodes)
        if not 0.0 <= edge_probability <= 1.0:
            raise ValueError(f"edge_probability must be in [0, 1], got {edge_probability}")
        super().__init__(max_nodes)
        self.min_nodes, self.max_nodes, self.edge_probability = min_nodes, max_nodes, edge_probability
        self.input_spec = VectorInput(2 * max_nodes + 2)

    def random_graph(self, rng: np.random.Generator):
        graph = random_connected_graph(rng, self.min_nodes, self.max_nodes, self.edge_probability)
        return graph, random_features(rng, graph.num_nodes, self.n_max)
