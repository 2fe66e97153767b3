"""The interface every supervised task implements, and the pieces tasks share.

A task turns a seeded ``numpy.random.Generator`` into a :class:`Batch` of batch-first tensors:
``inputs [B, T, ...]``, ``targets [B, T]`` (class indices) or ``[B, T, O]`` (bits), and a boolean
``mask [B, T]`` that marks the answer steps the loss and the metrics look at (``../shared/spec/SUPERVISED.md``).
Sequences of different lengths are padded at the end; models are causal, so padding after a sample's
last step never changes its answers.

Metrics are returned as ``{name: (total, count)}`` pairs so that an evaluation over many batches
adds totals and counts and divides once (e.g. copy's "wrong bits summed over the answer / batch size").
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MetricTotals = dict[str, tuple[float, float]]
"""``{metric name: (total, count)}``; the metric's value is ``total / count``."""


@dataclass(frozen=True)
class VectorInput:
    """Each step is a float vector of ``size`` channels (fed to the model as it is)."""

    size: int


@dataclass(frozen=True)
class TokenInput:
    """Each step is one token id in ``[0, vocab_size)``, embedded to ``embedding_size`` (associative retrieval)."""

    vocab_size: int
    embedding_size: int


@dataclass(frozen=True)
class SentenceInput:
    """Each step is a sentence of word ids ``[W]`` (0 = padding), encoded by a position-weighted sum (bAbI)."""

    vocab_size: int
    embedding_size: int
    max_words: int


InputSpec = Union[VectorInput, TokenInput, SentenceInput]


@dataclass
class Sample:
    """One generated example before batching (numpy arrays, time first)."""

    inputs: np.ndarray  # [T, I] float or [T] / [T, W] int
    targets: np.ndarray  # [T] int or [T, O] float
    mask: np.ndarray  # [T] bool
    extras: dict = field(default_factory=dict)  # per-sample arrays a metric needs (e.g. TSP coordinates)


@dataclass
class Batch:
    """A batch of padded, batch-first sequences."""

    inputs: Tensor
    """``[B, T, I]`` floats, ``[B, T]`` token ids or ``[B, T, W]`` word ids."""
    targets: Tensor
    """``[B, T]`` class ids (long) or ``[B, T, O]`` bits (float)."""
    mask: Tensor
    """``[B, T]`` bool: the answer steps."""
    lengths: Tensor
    """``[B]`` the unpadded length of every sequence."""
    extras: dict = field(default_factory=dict)
    """Per-sample padded arrays (numpy) some metrics need, indexed like the batch."""

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    def select(self, index: Union[slice, np.ndarray]) -> "Batch":
        """The samples at ``index`` (a slice or an index array), trimmed to their longest sequence."""
        if isinstance(index, np.ndarray):
            index_t = torch.as_tensor(index, dtype=torch.long)
            pick = lambda t: t.index_select(0, index_t)  # noqa: E731
        else:
            pick = lambda t: t[index]  # noqa: E731
        lengths = pick(self.lengths)
        steps = int(lengths.max()) if lengths.numel() else 0
        return Batch(pick(self.inputs)[:, :steps], pick(self.targets)[:, :steps], pick(self.mask)[:, :steps],
                     lengths, {k: v[index] for k, v in self.extras.items()})

    def chunks(self, batch_size: int) -> list["Batch"]:
        """Consecutive pieces of at most ``batch_size`` samples (for evaluation)."""
        return [self.select(slice(i, i + batch_size)) for i in range(0, self.size, batch_size)]

    def to(self, device: Union[str, torch.device]) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device),
                     self.lengths, self.extras)


def collate(samples: Sequence[Sample]) -> Batch:
    """Pad samples at the end to the longest one and stack them batch-first."""
    lengths = np.array([len(s.mask) for s in samples])
    steps = int(lengths.max())

    def pad(arrays: Sequence[np.ndarray]) -> np.ndarray:
        first = arrays[0]
        out = np.zeros((len(arrays), steps) + first.shape[1:], dtype=first.dtype)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = a
        return out

    inputs = pad([s.inputs for s in samples])
    targets = pad([s.targets for s in samples])
    extras = {}
    for key in samples[0].extras:
        values = [np.asarray(s.extras[key]) for s in samples]
        if values[0].ndim == 0:
            extras[key] = np.stack(values)
        else:  # ragged per-sample arrays: pad the first axis with zeros and keep each one's count
            width = max(len(v) for v in values)
            out = np.zeros((len(values), width) + values[0].shape[1:], dtype=values[0].dtype)
            for i, v in enumerate(values):
                out[i, : len(v)] = v
            extras[key] = out
            extras[key + "_count"] = np.array([len(v) for v in values])
    return Batch(inputs=_as_tensor(inputs), targets=_as_tensor(targets),
                 mask=torch.from_numpy(pad([s.mask.astype(bool) for s in samples])),
                 lengths=torch.from_numpy(lengths), extras=extras)


def _as_tensor(array: np.ndarray) -> Tensor:
    """Integer arrays become long tensors (ids), everything else float32."""
    if array.dtype.kind in "iu":
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float32))


@dataclass(frozen=True)
class Plateau:
    """What a model scores by a shortcut that uses none of what the task tests (``Task.plateaus``)."""

    name: str
    """A few words, e.g. ``"label-only"``."""
    value: float
    """The task's main metric under the shortcut (its expectation over the task's samples)."""
    loss: Optional[float]
    """The training loss of the best predictor that follows the shortcut, where it is computed."""
    rule: str
    """The shortcut in one sentence."""


class Task(abc.ABC):
    """A supervised memory task (``../shared/spec/SUPERVISED.md``, one row of its table).

    Subclasses set the class attributes and implement :meth:`generate` (one sample) or override
    :meth:`sample`; :meth:`loss` and :meth:`metrics` come from the output family (bits or classes).
    """

    name: ClassVar[str]
    """Registry name, e.g. ``"copy"``."""
    description: ClassVar[str]
    """One line for ``--list``."""
    paper_result: ClassVar[str]
    """The paper's STM number for this task (for the README / docs table)."""
    main_metric: ClassVar[str]
    """The metric that picks the best checkpoint and shows on the progress bar."""
    higher_is_better: ClassVar[bool]

    input_spec: InputSpec
    output_size: int

    @property
    def input_size(self) -> int:
        """Width of the vector the model core receives (after the input encoder, if any)."""
        spec = self.input_spec
        return spec.size if isinstance(spec, VectorInput) else spec.embedding_size

    def generate(self, rng: np.random.Generator) -> Sample:
        """One sample; tasks that do not draw samples independently override :meth:`sample` instead."""
        raise NotImplementedError

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """A training batch of ``batch_size`` fresh samples drawn with ``rng``."""
        return collate([self.generate(rng) for _ in range(batch_size)])

    def dataset(self, split: str, size: int, seed: int) -> Batch:
        """The fixed ``split`` set ("train", "valid" or "test") of ``size`` samples for ``seed``.

        The same seed always gives the same set, and the three splits use independent streams.
        """
        return self.sample(size, split_rng(seed, split))

    def eval_batches(self, split: str, size: int, seed: int, batch_size: int) -> list[Batch]:
        """The fixed ``split`` set cut into batches for evaluation."""
        return self.dataset(split, size, seed).chunks(batch_size)

    @abc.abstractmethod
    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss of model outputs ``[B, T, output_size]`` (logits)."""

    @abc.abstractmethod
    def metrics(self, outputs: Tensor, batch: Batch) -> MetricTotals:
        """The spec's metrics for one batch, as ``(total, count)`` pairs."""

    def summarize(self, values: Mapping[str, float]) -> dict[str, float]:
        """Metrics derived from the aggregated ones (bAbI's mean error); default: unchanged."""
        return dict(values)

    def plateaus(self) -> list[Plateau]:
        """The task's shortcut plateaus, weakest first: where a model that has not learned the task sits
        (``benchmarks/supervised_table.py`` prints them and whether a model left them); none by default."""
        return []


SPLIT_STREAMS = {"train": 1, "valid": 2, "test": 3, "sampling": 4, "shortcut": 5}


def split_rng(seed: int, split: str) -> np.random.Generator:
    """An independent generator for one split of one seed (no global random state)."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split]])


# ----------------------------------------------------------------------------------------------------
# Output families shared by the tasks.


class BitOutputTask(Task):
    """Tasks whose answer is a sequence of bit vectors (copy, priority sort, RAR): sigmoid + BCE.

    Metric (spec table): bit error per sequence = wrong bits (threshold 0.5 on the probability, i.e.
    logit > 0) summed over the answer steps, divided by the batch size.
    """

    main_metric = "bit_error"
    higher_is_better = False
    bits: int

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return masked_bce(outputs, batch.targets, batch.mask)

    def mean_answer_steps(self) -> float:
        """The expected number of answer steps of a sample."""
        raise NotImplementedError

    def answer_bits(self) -> float:
        """The expected number of answer bits of a sample (the scale of the bit error)."""
        return self.bits * self.mean_answer_steps()

    def plateaus(self) -> list[Plateau]:
        return [Plateau("chance", self.answer_bits() / 2, float(np.log(2)),
                        "no memory: every answer bit at probability 1/2 (half the answer bits wrong, BCE ln 2)")]

    def metrics(self, outputs: Tensor, batch: Batch) -> MetricTotals:
        return {"bit_error": (float(wrong_bits(outputs, batch.targets, batch.mask).sum()), float(batch.size))}


class ClassOutputTask(Task):
    """Tasks whose answer is one or more class ids: softmax + cross-entropy on the answer steps.

    Metrics: ``accuracy`` (per answer step, the paper's "per-step accuracy" for sequence answers)
    and ``sequence_accuracy`` (every answer step of a sample right) when answers have several steps.
    """

    main_metric = "accuracy"
    higher_is_better = True
    multi_step_answer: ClassVar[bool] = False

    def loss(self, outputs: Tensor, batch: Batch) -> Tensor:
        return masked_cross_entropy(outputs, batch.targets, batch.mask)

    def metrics(self, outputs: Tensor, batch: Batch) -> MetricTotals:
        correct = (outputs.argmax(-1) == batch.targets) & batch.mask
        result = {"accuracy": (float(correct.sum()), float(batch.mask.sum()))}
        if self.multi_step_answer:
            exact = (correct | ~batch.mask).all(dim=1)
            result["sequence_accuracy"] = (float(exact.sum()), float(batch.size))
        return result


def masked_bce(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean binary cross-entropy over the bits of the masked steps."""
    per_bit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    weights = mask.unsqueeze(-1).to(per_bit.dtype)
    return (per_bit * weights).sum() / (weights.sum() * per_bit.shape[-1]).clamp_min(1)


def masked_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Mean cross-entropy over the masked steps."""
    return F.cross_entropy(logits[mask], targets[mask])


def wrong_bits(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` the number of wrong bits (prediction = logit > 0, i.e. probability > 0.5) per sample."""
    wrong = ((logits > 0).to(targets.dtype) != targets) & mask.unsqueeze(-1)
    return wrong.flatten(1).sum(1)


def one_hot(index: int, size: int) -> np.ndarray:
    vector = np.zeros(size, dtype=np.float32)
    vector[index] = 1.0
    return vector


def random_features(rng: np.random.Generator, count: int, n_max: int) -> np.ndarray:
    """``count`` distinct features drawn from ``0 .. n_max - 1`` in random order."""
    return rng.permutation(n_max)[:count]


def random_bits(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Uniform random bits as float32 0/1."""
    return rng.integers(0, 2, size=tuple(shape)).astype(np.float32)


def check_range(name: str, value: int, low: int, high: Optional[int] = None) -> None:
    """Raise ``ValueError`` (turned into a one-line CLI error) for a task option out of range."""
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


class LengthPerBatchTask(Task):
    """A task whose samples have a drawn length, which the authors' code draws once per training batch.

    Subclasses implement :meth:`draw_lengths` (``rng`` -> the lengths of one sample, a tuple) and
    :meth:`generate_with` (one sample of those lengths), and set ``one_length_per_batch``. When it is set, a
    training batch (:meth:`sample`) shares one draw, as ``run_toys.py`` does (one copy length, one RAR item count
    or item length per batch: no padding, so about half the steps of per-sample lengths at the same batch size);
    the fixed validation and test sets (:meth:`dataset`) keep one draw per sample either way, so that they
    cover every length in the same proportions whatever the option.
    """

    one_length_per_batch: bool = False

    def draw_lengths(self, rng: np.random.Generator) -> tuple[int, ...]:
        raise NotImplementedError

    def generate_with(self, rng: np.random.Generator, lengths: tuple[int, ...]) -> Sample:
        raise NotImplementedError

    def generate(self, rng: np.random.Generator) -> Sample:
        return self.generate_with(rng, self.draw_lengths(rng))

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        if not self.one_length_per_batch:
            return super().sample(batch_size, rng)
        lengths = self.draw_lengths(rng)
        return collate([self.generate_with(rng, lengths) for _ in range(batch_size)])

    def dataset(self, split: str, size: int, seed: int) -> Batch:
        if not self.one_length_per_batch:
            return super().dataset(split, size, seed)
        rng = split_rng(seed, split)
        return collate([self.generate(rng) for _ in range(size)])  # the same samples as without the option


def check_flag(name: str, value: object) -> bool:
    """Raise ``ValueError`` (a one-line CLI error) unless a task option is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


class AnswerSequenceTask(ClassOutputTask):
    """Tasks that answer with a sequence of node/point features, then END (geometry and graph tasks).

    Output classes (spec: "CE over N_max + 2"): ``0 .. n_max - 1`` the one-hot features, ``n_max`` END,
    ``n_max + 1`` START (never a target; reserved for decoders that feed their previous output back).
    """

    multi_step_answer = True

    def __init__(self, n_max: int) -> None:
        self.n_max = n_max
        self.end_class = n_max
        self.output_size = n_max + 2


def answer_sequence_sample(prefix: np.ndarray, answer: Sequence[int], end_class: int,
                           extras: Optional[dict] = None) -> Sample:
    """``prefix`` input steps ``[T0, I]`` followed by ``len(answer) + 1`` zero steps whose targets are the
    answer classes and then ``end_class``."""
    answer_steps = len(answer) + 1
    inputs = np.concatenate([prefix, np.zeros((answer_steps, prefix.shape[1]), dtype=prefix.dtype)])
    targets = np.zeros(len(inputs), dtype=np.int64)
    targets[len(prefix):] = [*answer, end_class]
    mask = np.zeros(len(inputs), dtype=bool)
    mask[len(prefix):] = True
    return Sample(inputs, targets, mask, extras or {})
