"""Shortest path (Graves et al. 2016 graph tasks; SAM paper section 3.3, spec table row "shortest path").

A random connected graph in the :mod:`graphs` encoding with a (source, target) query step, then the
features of the nodes on the lightest path from source to target (both included), then END. Metric:
per-step accuracy (the paper's), and exact-sequence accuracy.
"""

from __future__ import annotations

import numpy as np

from stm_rl.supervised.tasks.base import Sample, answer_sequence_sample
from stm_rl.supervised.tasks.graphs import GraphTask, encode_graph, shortest_path


class ShortestPathTask(GraphTask):
    name = "shortest-path"
    description = "random weighted graph (5..10 nodes) and a (source, target) query: output the lightest path"
    paper_result = "per-step accuracy 93.43%"

    def generate(self, rng: np.random.Generator) -> Sample:
        graph, features = self.random_graph(rng)
        source, target = (int(x) for x in rng.choice(graph.num_nodes, size=2, replace=False))
        path = shortest_path(graph, source, target)
        inputs = encode_graph(graph, features, self.n_max, rng, query=(source, target))
        return answer_sequence_sample(inputs, [int(features[v]) for v in path], self.end_class)
