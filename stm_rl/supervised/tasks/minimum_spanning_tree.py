"""Minimum spanning tree (SAM paper section 3.3, spec table row "minimum spanning tree").

A random connected graph in the :mod:`graphs` encoding with a flag-only query step, then the tree's
edges in Kruskal order (increasing weight), each as two steps (the endpoint with the lower feature
first), then END. Metric: per-step accuracy (the paper's), and exact-sequence accuracy.
"""

from __future__ import annotations

import numpy as np

from stm_rl.supervised.tasks.base import Sample, answer_sequence_sample
from stm_rl.supervised.tasks.graphs import GraphTask, encode_graph, minimum_spanning_tree


class MinimumSpanningTreeTask(GraphTask):
    name = "mst"
    description = "random weighted graph (5..10 nodes): output the minimum spanning tree's edges in Kruskal order"
    paper_result = "per-step accuracy 94.77%"

    def generate(self, rng: np.random.Generator) -> Sample:
        graph, features = self.random_graph(rng)
        answer = []
        for u, v in minimum_spanning_tree(graph):
            answer.extend(sorted((int(features[u]), int(features[v]))))
        inputs = encode_graph(graph, features, self.n_max, rng, query=None)
        return answer_sequence_sample(inputs, answer, self.end_class)
