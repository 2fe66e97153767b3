"""Supervised task generators against independent brute-force computations, metrics on hand-made cases,
and the bAbI reader on a fixture written here (the shared bAbI folder is never needed)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stm_rl.run_dir import StmRlError
from stm_rl.supervised.models.encoders import PositionWeightedSentenceEncoder
from stm_rl.supervised.tasks import TASKS, make_task
from stm_rl.supervised.tasks.associative_retrieval import most_frequent_value_plateau
from stm_rl.supervised.tasks.babi import BabiFormatError, parse_babi_file
from stm_rl.supervised.tasks.base import Batch
from stm_rl.supervised.tasks.geometry import brute_force_tour, convex_hull, optimal_tours, tour_length


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def answer_of(batch: Batch, b: int) -> np.ndarray:
    return batch.targets[b][batch.mask[b]].numpy()


def steps_of(batch: Batch, b: int) -> np.ndarray:
    return batch.inputs[b, : int(batch.lengths[b])].numpy()


# ---- bit tasks --------------------------------------------------------------------------------------

def test_copy_targets_are_the_input_vectors():
    task = make_task("copy", bits=6, max_length=7)
    batch = task.sample(20, rng())
    for b in range(batch.size):
        steps = steps_of(batch, b)
        length = (len(steps) - 2) // 2
        assert steps[0, 6] == 1 and steps[length + 1, 7] == 1 and not steps[length + 2 :].any()
        assert np.array_equal(batch.targets[b][batch.mask[b]].numpy(), steps[1 : length + 1, :6])
    assert {int(n) for n in batch.lengths} <= {2 * n + 2 for n in range(1, 8)}


def test_priority_sort_targets_sorted_by_priority():
    task = make_task("priority-sort", bits=5, num_items=9, num_outputs=4)
    batch = task.sample(10, rng(1))
    for b in range(batch.size):
        steps = steps_of(batch, b)[:9]
        ranked = sorted(range(9), key=lambda i: steps[i, 5], reverse=True)[:4]
        assert np.array_equal(batch.targets[b][batch.mask[b]].numpy(), steps[ranked, :5])


@pytest.mark.parametrize("name", ["rar", "rar-as-run"])
def test_rar_answer_is_farthest_or_nearest_item(name):
    task = make_task(name, bits=6)
    batch = task.sample(30, rng(2))
    seen_rules = set()
    for b in range(batch.size):
        steps = steps_of(batch, b)
        starts = list(np.flatnonzero(steps[:, 6] == 1)) + [int(np.flatnonzero(steps[:, 7] == 1)[0])]
        length = starts[1] - starts[0] - 1
        items = [steps[s + 1 : s + 1 + length, :6] for s in starts[:-1]]
        query = steps[starts[-1] + 1 : starts[-1] + 1 + length, :6]
        assert any(np.array_equal(query, item) for item in items)
        farthest = query[-1, -1] == 1
        seen_rules.add(bool(farthest))
        others = [i for i, item in enumerate(items) if not np.array_equal(item, query)]
        distances = {i: math.dist(items[i].ravel(), query.ravel()) for i in others}
        best = max(distances.values()) if farthest else min(distances.values())
        answer = batch.targets[b][batch.mask[b]].numpy()
        assert any(np.array_equal(answer, items[i]) for i in others if distances[i] == best)
    assert seen_rules == {True, False}


# ---- classification tasks ----------------------------------------------------------------------------

def test_associative_retrieval_answer_by_scanning():
    task = make_task("associative-retrieval-30")
    batch = task.sample(50, rng(3))
    assert batch.inputs.shape == (50, 31)
    for b in range(batch.size):
        tokens = batch.inputs[b].tolist()
        pairs = list(zip(tokens[0:28:2], tokens[1:28:2]))
        assert len({k for k, _ in pairs}) == 14 and tokens[28] == tokens[29] == 36
        digit = next(v for k, v in pairs if k == tokens[30]) - 26
        assert answer_of(batch, b).tolist() == [digit]
    assert make_task("associative-retrieval-50").sample(2, rng()).inputs.shape == (2, 51)


def test_nth_farthest_against_sorting():
    task = make_task("nth-farthest")
    batch = task.sample(50, rng(4))
    assert batch.inputs.shape == (50, 8, 40)
    for b in range(batch.size):
        steps = batch.inputs[b].numpy()
        vectors, labels = steps[:, :16], steps[:, 16:24].argmax(1)
        n, m = int(steps[0, 24:32].argmax()), int(steps[0, 32:40].argmax())
        reference = vectors[list(labels).index(m)]
        by_distance = sorted(((float(np.sum((v - reference) ** 2)), int(l)) for v, l in zip(vectors, labels)),
                             reverse=True)
        assert answer_of(batch, b).tolist() == [by_distance[n][1]]


# ---- geometry ----------------------------------------------------------------------------------------

def decode_points(steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    points = steps[steps[:, 2] == 0][:, :2]
    features = steps[steps[:, 2] == 0][:, 3:].argmax(1)
    count = int(np.flatnonzero(steps[:, 2] == 1)[0])
    return points[:count], features[:count]


def test_convex_hull_against_brute_force_edges():
    task = make_task("convex-hull", min_points=5, max_points=12, test_points=8)
    batch = task.sample(40, rng(5))
    for b in range(batch.size):
        points, features = decode_points(steps_of(batch, b))
        answer = answer_of(batch, b)
        assert answer[-1] == task.end_class
        hull = [int(np.flatnonzero(features == f)[0]) for f in answer[:-1]]
        assert hull[0] == min(hull)

        def left(i, j, k):
            a, c, p = points[i], points[j], points[k]
            return (c[0] - a[0]) * (p[1] - a[1]) - (c[1] - a[1]) * (p[0] - a[0]) > 0

        brute = {(i, j) for i, j in itertools.permutations(range(len(points)), 2)
                 if all(left(i, j, k) for k in range(len(points)) if k not in (i, j))}
        assert set(zip(hull, hull[1:] + hull[:1])) == brute
    fixed = task.dataset("test", 5, seed=0)
    assert all(int((s[:, 2] == 0).sum()) >= 8 for s in fixed.inputs.numpy())


def test_convex_hull_square_with_inner_point():
    points = np.array([[0.5, 0.5], [1, 0], [1, 1], [0, 1], [0, 0]], dtype=float)
    assert convex_hull(points) == [1, 2, 3, 4]


def test_held_karp_against_permutations():
    generator = rng(6)
    for n in (4, 5, 6, 7):
        points = generator.uniform(size=(8, n, 2))
        for tour, p in zip(optimal_tours(points), points):
            best = min(tour_length(p, (0, *perm)) for perm in itertools.permutations(range(1, n)))
            assert tour_length(p, tour) == pytest.approx(best)
            assert tour == brute_force_tour(p)


def test_tsp_targets_are_optimal_tours():
    task = make_task("tsp-5")
    batch = task.sample(20, rng(7))
    for b in range(batch.size):
        points, features = decode_points(steps_of(batch, b))
        answer = answer_of(batch, b)
        tour = [int(np.flatnonzero(features == f)[0]) for f in answer[:-1]]
        assert tour[0] == 0 and sorted(tour) == list(range(5)) and answer[-1] == task.end_class
        best = min(tour_length(points, (0, *perm)) for perm in itertools.permutations(range(1, 5)))
        assert tour_length(points, tour) == pytest.approx(best, rel=1e-5)


@pytest.mark.parametrize("name", ["convex-hull", "tsp-5", "tsp-10"])
def test_position_test_labels_name_points_by_input_position(name):
    options = {"tsp-10": {"num_cities": 6}}.get(name, {})
    task = make_task(name, test_labels="position", **options)
    count = 0
    for split in ("valid", "test"):
        batch = task.dataset(split, 6, seed=3)
        for b in range(batch.size):
            points, features = decode_points(steps_of(batch, b))
            assert list(features) == list(range(len(points)))  # the i-th point is labelled i
            count += 1
    train = task.dataset("train", 6, seed=3)
    assert any(list(decode_points(steps_of(train, b))[1]) != list(range(len(decode_points(steps_of(train, b))[0])))
               for b in range(train.size))  # training keeps random labels
    random = make_task(name, **options).dataset("test", 6, seed=3)
    assert any(list(decode_points(steps_of(random, b))[1]) != list(range(len(decode_points(steps_of(random, b))[0])))
               for b in range(random.size))
    assert count == 12


def test_paper_preset_uses_position_test_labels_and_bad_labelling_is_one_line():
    from stm_rl.supervised.config import resolve_config

    for name in ("convex-hull", "tsp-5", "tsp-10"):
        assert resolve_config(name, "stm", "paper").task_options["test_labels"] == "position"
        assert "test_labels" not in resolve_config(name, "stm", "small").task_options
    with pytest.raises(StmRlError, match="test_labels must be one of random, position"):
        make_task("convex-hull", test_labels="sorted")


# ---- graphs ------------------------------------------------------------------------------------------

def decode_graph(steps: np.ndarray, n_max: int):
    """Edges {(u, v): w} by feature, and the query, from the input steps."""
    query_row = int(np.flatnonzero(steps[:, 2 * n_max + 1] == 1)[0])
    edges = {}
    for row in steps[:query_row]:
        u, v = int(row[:n_max].argmax()), int(row[n_max : 2 * n_max].argmax())
        edges[tuple(sorted((u, v)))] = float(row[2 * n_max])
    query = steps[query_row]
    nodes = {x for e in edges for x in e}
    source = int(query[:n_max].argmax()) if query[:n_max].any() else None
    target = int(query[n_max : 2 * n_max].argmax()) if query[n_max : 2 * n_max].any() else None
    return nodes, edges, source, target


def test_shortest_path_against_all_simple_paths():
    task = make_task("shortest-path", min_nodes=4, max_nodes=7)
    batch = task.sample(30, rng(8))
    for b in range(batch.size):
        nodes, edges, source, target = decode_graph(steps_of(batch, b), task.n_max)
        adjacency = {n: {v for e in edges if n in e for v in e if v != n} for n in nodes}

        def paths(path):
            if path[-1] == target:
                yield path
                return
            for nxt in adjacency[path[-1]] - set(path):
                yield from paths(path + [nxt])

        weight = lambda p: sum(edges[tuple(sorted(e))] for e in zip(p, p[1:]))  # noqa: E731
        best = min(paths([source]), key=weight)
        assert answer_of(batch, b).tolist() == best + [task.end_class]


def test_mst_against_all_spanning_trees():
    task = make_task("mst", min_nodes=3, max_nodes=6)
    batch = task.sample(20, rng(9))
    for b in range(batch.size):
        nodes, edges, _, _ = decode_graph(steps_of(batch, b), task.n_max)

        def connects(subset):
            reached, frontier = set(), [next(iter(nodes))]
            while frontier:
                x = frontier.pop()
                if x not in reached:
                    reached.add(x)
                    frontier += [v for e in subset if x in e for v in e]
            return reached == nodes

        trees = [s for s in itertools.combinations(edges, len(nodes) - 1) if connects(s)]
        best = min(trees, key=lambda s: sum(edges[e] for e in s))
        expected = [x for e in sorted(best, key=lambda e: edges[e]) for x in e]
        assert answer_of(batch, b).tolist() == expected + [task.end_class]


def test_graphs_are_connected_with_distinct_features():
    task = make_task("shortest-path")
    for sample in (task.generate(rng(s)) for s in range(10)):
        features = sample.inputs[:-1, : 2 * task.n_max].reshape(-1, 2, task.n_max).argmax(2)
        assert 5 <= len(np.unique(features)) <= 10


# ---- reproducibility and metrics ----------------------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in TASKS if n != "babi"])
def test_fixed_sets_are_reproducible_and_splits_differ(name):
    options = {"tsp-10": {"num_cities": 6}}.get(name, {})
    task = make_task(name, **options)
    a, b = task.dataset("valid", 6, seed=3), task.dataset("valid", 6, seed=3)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(task.dataset("test", 6, seed=3).inputs[:, :2], a.inputs[:, :2])
    assert a.mask.any(dim=1).all()


def test_bit_error_per_sequence_on_hand_made_case():
    task = make_task("copy", bits=2, max_length=1)
    targets = torch.tensor([[[0, 0], [1, 0]], [[0, 0], [1, 1]]], dtype=torch.float32)
    mask = torch.tensor([[False, True], [False, True]])
    batch = Batch(torch.zeros(2, 2, 4), targets, mask, torch.tensor([2, 2]))
    logits = torch.tensor([[[5.0, 5.0], [3.0, 3.0]], [[0.0, 0.0], [-1.0, 2.0]]])  # wrong: 1 bit, then 1 bit
    total, count = task.metrics(logits, batch)["bit_error"]
    assert total / count == 1.0  # (1 + 1) wrong bits / 2 sequences; the unmasked step does not count


def test_rar_items_perfect_metric():
    task = make_task("rar", bits=2)
    targets = torch.ones(2, 1, 2)
    batch = Batch(torch.zeros(2, 1, 4), targets, torch.ones(2, 1, dtype=torch.bool), torch.tensor([1, 1]))
    logits = torch.tensor([[[1.0, 1.0]], [[1.0, -1.0]]])
    metrics = task.metrics(logits, batch)
    assert metrics["items_perfect"] == (1.0, 2.0) and metrics["bit_error"] == (1.0, 2.0)


def test_sequence_accuracy_and_per_step_accuracy():
    task = make_task("shortest-path")
    targets = torch.tensor([[0, 1, 2], [0, 3, 4]])
    mask = torch.tensor([[False, True, True], [False, True, True]])
    batch = Batch(torch.zeros(2, 3, task.input_size), targets, mask, torch.tensor([3, 3]))
    logits = torch.nn.functional.one_hot(torch.tensor([[5, 1, 2], [0, 3, 1]]), task.output_size).float()
    metrics = task.metrics(logits, batch)
    assert metrics["accuracy"] == (3.0, 4.0) and metrics["sequence_accuracy"] == (1.0, 2.0)


def test_tsp_tour_length_metric_counts_valid_tours_only():
    task = make_task("tsp-5")
    batch = task.sample(2, rng(10))
    logits = torch.nn.functional.one_hot(batch.targets, task.output_size).float()
    logits[1, batch.mask[1].nonzero()[0, 0] + 1] = logits[1, batch.mask[1].nonzero()[0, 0]]  # repeat a city
    metrics = task.metrics(logits, batch)
    assert metrics["valid_tours"] == (1.0, 2.0)
    assert metrics["tour_length"][0] == pytest.approx(float(batch.extras["optimal_length"][0]), rel=1e-5)


# ---- shortcut plateaus --------------------------------------------------------------------------------------

def test_associative_retrieval_plateau_exact_and_by_the_generator():
    assert most_frequent_value_plateau(1)[0] == 1.0
    assert most_frequent_value_plateau(2) == pytest.approx((0.1 + 0.9 * 0.5, 0.9 * math.log(2)))
    task = make_task("associative-retrieval-30")
    (plateau,) = task.plateaus()
    assert (plateau.value, plateau.loss) == pytest.approx((0.2466, 1.9211), abs=1e-4)  # the 0.247 / 1.92
    generator, hits, samples = rng(), 0.0, 4000
    for _ in range(samples):  # the key-blind rule on the task's own samples: the most frequent digit, ties shared
        sample = task.generate(generator)
        counts = np.bincount(sample.inputs[1 : 2 * task.num_pairs : 2] - 26, minlength=10)
        answer_count = counts[sample.targets[-1]]
        hits += (answer_count == counts.max()) / (counts == counts.max()).sum()
    assert hits / samples == pytest.approx(plateau.value, abs=0.02)  # 3 standard errors of 4000 samples


def test_nth_farthest_plateau_is_two_over_k_by_the_generator():
    task = make_task("nth-farthest")
    (plateau,) = task.plateaus()
    assert (plateau.value, plateau.loss) == pytest.approx((0.25, 7 / 8 * math.log(7)))
    generator, hits, samples = rng(), 0, 4000
    for _ in range(samples):  # answer m when n = 7, else a fixed other label (label 0, or 1 when m = 0)
        sample = task.generate(generator)
        n, m = (int(np.argmax(sample.inputs[0, 16 + 8 * i : 24 + 8 * i])) for i in (1, 2))
        hits += int(sample.targets[-1]) == (m if n == 7 else int(m == 0))
    assert hits / samples == pytest.approx(0.25, abs=0.02)


def test_bit_task_plateaus_chance_and_rar_shortcuts():
    (chance,) = make_task("copy", bits=8, max_length=10).plateaus()
    assert (chance.value, chance.loss) == pytest.approx((22.0, math.log(2)))  # 5.5 steps x 8 bits / 2
    plateaus = make_task("rar", bits=8).plateaus()
    assert [p.name for p in plateaus] == ["chance", "query-only", "bit vote"]
    assert 12.0 > plateaus[1].value > plateaus[2].value > 0
    assert make_task("rar", bits=4, max_items=2).plateaus()[2].value == 0  # K = 2: the other item, bit by bit


# ---- bAbI --------------------------------------------------------------------------------------------

STORY = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel went back to the hallway.
5 Where is Daniel? \thallway\t4
1 Sandra moved to the garden.
2 Where is Sandra? \tgarden\t1
"""
PATH_STORY = """1 The kitchen is north of the hallway.
2 How do you go from the hallway to the kitchen?\tn,n\t1
"""


def write_babi(folder, layout="valid", tasks=(1, 2), skip_train=()):
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        text = STORY if task % 2 else PATH_STORY
        for split in ("train", "valid", "test") if layout == "valid" else ("train", "test"):
            if split == "train" and task in skip_train:
                continue
            name = f"qa{task}_{split}.txt" if layout == "valid" else f"qa{task}_some-name_{split}.txt"
            (folder / name).write_text(text)
    return folder


def test_babi_reader_parses_stories_and_questions(tmp_path):
    questions = parse_babi_file(write_babi(tmp_path / "d") / "qa1_train.txt", 1)
    assert [q.answer for q in questions] == ["bathroom", "hallway", "garden"]
    assert questions[1].story == [["mary", "moved", "to", "the", "bathroom"], ["john", "went", "to", "the", "hallway"],
                                  ["daniel", "went", "back", "to", "the", "hallway"]]
    assert questions[2].story == [["sandra", "moved", "to", "the", "garden"]]
    assert questions[0].question == ["where", "is", "mary"]


@pytest.mark.parametrize("text, where", [
    ("1 Mary moved.\nfoo bar\n", "line 2"),
    ("1 Mary moved.\n3 John went.\n", "line 2"),
    ("1 Mary moved.\n2 Where is Mary?\t\t1\n", "line 2"),
    ("1 Mary moved.\n", "no questions"),
])
def test_babi_reader_reports_file_and_line(tmp_path, text, where):
    path = tmp_path / "qa1_train.txt"
    path.write_text(text)
    with pytest.raises(BabiFormatError, match=where) as info:
        parse_babi_file(path, 1)
    assert str(path) in str(info.value)


def test_babi_task_layouts_and_batches(tmp_path):
    task = make_task("babi", data_dir=str(write_babi(tmp_path / "en-valid-10k")))
    assert task.tasks == [1, 2] and "n,n" in task.vocabulary
    batch = task.sample(4, rng())
    assert batch.inputs.dim() == 3 and batch.inputs.dtype == torch.long
    last = batch.lengths - 1
    assert batch.mask[torch.arange(4), last].all() and int(batch.mask.sum()) == 4
    flat = make_task("babi", data_dir=str(write_babi(tmp_path / "en", layout="flat", tasks=(1,))))
    assert len(flat.splits["valid"]) == 1 and len(flat.splits["train"]) == 2


def test_babi_missing_training_file_policies(tmp_path):
    folder = write_babi(tmp_path / "en-valid-10k", tasks=(1, 2), skip_train=(2,))
    with pytest.raises(StmRlError, match="task 2.*--babi-missing"):
        make_task("babi", data_dir=str(folder))
    assert make_task("babi", data_dir=str(folder), missing="skip").tasks == [1]
    write_babi(tmp_path / "en", layout="flat", tasks=(2,))
    task = make_task("babi", data_dir=str(folder), missing="use-1k")
    assert task.tasks == [1, 2] and "1k file" in task.notes[0]
    with pytest.raises(StmRlError, match="no such directory"):
        make_task("babi", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(StmRlError, match="bAbI needs --data-dir"):
        make_task("babi")


def test_babi_metrics_per_task_error_and_mean(tmp_path):
    task = make_task("babi", data_dir=str(write_babi(tmp_path / "d")))
    batch = task.dataset("test", 0, seed=0)
    logits = torch.nn.functional.one_hot(batch.targets, task.output_size).float()
    wrong = int(np.flatnonzero(batch.extras["task"] == 1)[0])
    logits[wrong, int(batch.lengths[wrong]) - 1] = logits[wrong, int(batch.lengths[wrong]) - 1].roll(1)
    totals = task.metrics(logits, batch)
    values = task.summarize({k: t / c for k, (t, c) in totals.items()})
    assert values["error_qa1"] == pytest.approx(100 / 3) and values["error_qa2"] == 0
    assert values["mean_error"] == pytest.approx(50 / 3) and values["tasks_solved"] == 1


def test_position_weighted_sentence_encoder_matches_formula():
    encoder = PositionWeightedSentenceEncoder(vocab_size=5, embedding_size=4)
    words = torch.tensor([[[1, 2, 0]]])
    out = encoder(words)[0, 0]
    J, E = 2, 4
    expected = sum(((1 - j / J) - (torch.arange(1, E + 1) / E) * (1 - 2 * j / J)) * encoder.embedding.weight[w]
                   for j, w in ((1, 1), (2, 2)))
    assert torch.allclose(out, expected)
