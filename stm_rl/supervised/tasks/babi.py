"""bAbI question answering (Weston et al. 2015; SAM paper section 3.4, spec table row "bAbI").

Reads the standard bAbI v1.2 text files from a directory the user names, in any of the three layouts:
``en-valid-10k`` (``qa{N}_train.txt``, ``qa{N}_valid.txt``, ``qa{N}_test.txt``) or ``en`` / ``en-10k``
(``qa{N}_{name}_train.txt``, ``qa{N}_{name}_test.txt``; there the last 10% of each task's training
questions become the validation set). All tasks are trained jointly. Every question is one example: the
story's sentences so far (at most ``max_sentences``, the most recent), then the question, one sentence
per step; the answer (one vocabulary word; the list answers of tasks 8 and 19 such as ``n,s`` are one
word) is read after the question. The model's input encoder turns each sentence into a vector by a
position-weighted sum of word embeddings. Metrics: error % per task, mean error over tasks, tasks solved
(error <= 5%).

File format: one sentence per line, ``ID text``; questions are ``ID question?<TAB>answer<TAB>supporting
IDs``; the ID going back to 1 starts a new story.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from torch import Tensor

from stm_rl.run_dir import StmRlError
from stm_rl.supervised.tasks.base import (
    Batch, ClassOutputTask, MetricTotals, Sample, SentenceInput, collate, split_rng,
)

SOLVED_ERROR = 5.0  # percent, the usual "task solved" threshold
MISSING_CHOICES = ("error", "skip", "use-1k")
_TOKEN = re.compile(r"[A-Za-z0-9,']+")


class BabiFormatError(StmRlError):
    """A bAbI file that does not follow the standard format (names the file and the line)."""


@dataclass
class BabiQuestion:
    """One question with the story before it."""

    task: int
    story: list[list[str]]
    question: list[str]
    answer: str


def tokenize(sentence: str) -> list[str]:
    """Lower-case words without punctuation (``"Where is Mary?"`` -> ``["where", "is", "mary"]``)."""
    return [word.lower() for word in _TOKEN.findall(sentence)]


def parse_babi_file(path: Path, task: int) -> list[BabiQuestion]:
    """Every question of one bAbI file; :class:`BabiFormatError` names the file and line of any defect."""
    questions: list[BabiQuestion] = []
    story: list[list[str]] = []
    previous_id = 0
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise BabiFormatError(f"{path}: not a UTF-8 text file ({error})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        head, _, rest = line.partition(" ")
        if not head.isdigit() or not rest.strip():
            raise BabiFormatError(f"{path}, line {number}: expected 'ID text', got {line[:60]!r}")
        line_id = int(head)
        if line_id == 1:
            story = []
        elif line_id != previous_id + 1:
            raise BabiFormatError(f"{path}, line {number}: sentence ID {line_id} does not follow {previous_id}")
        previous_id = line_id
        if "\t" in rest:
            fields = rest.split("\t")
            if len(fields) < 2 or not fields[1].strip() or not tokenize(fields[0]):
                raise BabiFormatError(f"{path}, line {number}: a question line needs 'question<TAB>answer'")
            questions.append(BabiQuestion(task, [list(s) for s in story], tokenize(fields[0]),
                                          fields[1].strip().lower()))
        else:
            words = tokenize(rest)
            if not words:
                raise BabiFormatError(f"{path}, line {number}: empty sentence")
            story.append(words)
    if not questions:
        raise BabiFormatError(f"{path}: no questions (lines 'ID question?<TAB>answer<TAB>IDs') found")
    return questions


def find_task_file(directory: Path, task: int, split: str) -> Optional[Path]:
    """The file of one task and split in either layout, or ``None``."""
    exact = directory / f"qa{task}_{split}.txt"
    if exact.is_file():
        return exact
    matches = sorted(directory.glob(f"qa{task}_*_{split}.txt"))
    return matches[0] if matches else None


def tasks_in(directory: Path) -> list[int]:
    """The task numbers that have any file (train, valid or test) in ``directory``."""
    found = {int(m.group(1)) for p in directory.glob("qa*_*.txt") if (m := re.match(r"qa(\d+)_", p.name))}
    if not found:
        raise StmRlError(f"{directory} holds no bAbI files (qa<N>_..._train.txt / _test.txt)")
    return sorted(found)


class BabiTask(ClassOutputTask):
    name = "babi"
    description = "bAbI 20 QA tasks jointly (--data-dir: en-valid-10k, en-10k or en layout)"
    paper_result = "mean error 0.39% +- 0.18 (10 runs), best 0.15%"
    main_metric = "mean_error"
    higher_is_better = False

    def __init__(self, data_dir: str = "", tasks: Optional[Sequence[int]] = None, missing: str = "error",
                 fallback_dir: str = "", max_sentences: int = 50, embedding_size: int = 90) -> None:
        if missing not in MISSING_CHOICES:
            raise StmRlError(f"babi missing-file policy must be one of {', '.join(MISSING_CHOICES)}, got {missing!r}")
        if not data_dir:
            raise StmRlError("bAbI needs --data-dir: a folder of bAbI v1.2 files (en-valid-10k, en-10k or en); "
                             "the project never downloads it")
        directory = Path(data_dir)
        if not directory.is_dir():
            raise StmRlError(f"--data-dir {data_dir}: no such directory (expected a folder of bAbI v1.2 files: "
                             "en-valid-10k, en-10k or en)")
        fallback = Path(fallback_dir) if fallback_dir else directory.parent / "en"
        self.max_sentences = max_sentences
        self.splits: dict[str, list[BabiQuestion]] = {"train": [], "valid": [], "test": []}
        self.tasks: list[int] = []
        self.notes: list[str] = []
        for task in tasks if tasks is not None else tasks_in(directory):
            files = {split: find_task_file(directory, task, split) for split in ("train", "valid", "test")}
            if files["train"] is None:
                if missing == "error":
                    raise StmRlError(
                        f"bAbI task {task}: no training file in {directory}; rerun with --babi-missing skip "
                        f"to leave the task out, or --babi-missing use-1k to train it on the 1k file (from {fallback})")
                if missing == "skip":
                    self.notes.append(f"task {task} skipped: no training file in {directory}")
                    continue
                files["train"] = find_task_file(fallback, task, "train")
                if files["train"] is None:
                    raise StmRlError(f"bAbI task {task}: no training file in {directory} nor in {fallback} "
                                     "(--babi-fallback-dir)")
                self.notes.append(f"task {task} trained on the 1k file {files['train']}")
            if files["test"] is None:
                raise StmRlError(f"bAbI task {task}: no test file in {directory}")
            train = parse_babi_file(files["train"], task)
            if files["valid"] is None:  # en / en-10k layout: hold out the last 10% of training questions
                cut = max(1, len(train) // 10)
                train, valid = train[:-cut], train[-cut:]
            else:
                valid = parse_babi_file(files["valid"], task)
            self.splits["train"] += train
            self.splits["valid"] += valid
            self.splits["test"] += parse_babi_file(files["test"], task)
            self.tasks.append(task)
        if not self.tasks:
            raise StmRlError(f"no bAbI task left to train on in {directory}")

        words = sorted({w for questions in self.splits.values() for q in questions
                        for w in [*(w for s in q.story for w in s), *q.question, q.answer]})
        self.vocabulary = ["<pad>", *words]
        self.word_ids = {w: i for i, w in enumerate(self.vocabulary)}
        max_words = max(len(s) for questions in self.splits.values() for q in questions
                        for s in [*q.story, q.question])
        self.input_spec = SentenceInput(len(self.vocabulary), embedding_size, max_words)
        self.output_size = len(self.vocabulary)
        self._samples = {split: [self._encode(q) for q in questions] for split, questions in self.splits.items()}

    def _encode(self, question: BabiQuestion) -> Sample:
        sentences = [*question.story[-self.max_sentences:], question.question]
        words = np.zeros((len(sentences), self.input_spec.max_words), dtype=np.int64)
        for row, sentence in enumerate(sentences):
            words[row, : len(sentence)] = [self.word_ids[w] for w in sentence]
        targets = np.zeros(len(sentences), dtype=np.int64)
        targets[-1] = self.word_ids[question.answer]
        mask = np.zeros(len(sentences), dtype=bool)
        mask[-1] = True
        return Sample(words, targets, mask, extras={"task": np.int64(question.task)})

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        pool = self._samples["train"]
        return collate([pool[i] for i in rng.integers(0, len(pool), size=batch_size)])

    def _subset(self, split: str, size: int, seed: int) -> list[Sample]:
        samples = self._samples[split]
        if size <= 0 or size >= len(samples):
            return samples
        return [samples[i] for i in np.sort(split_rng(seed, split).choice(len(samples), size, replace=False))]

    def dataset(self, split: str, size: int, seed: int) -> Batch:
        """The questions of ``split`` (all of them if ``size <= 0``, else a seeded subset of ``size``)."""
        return collate(self._subset(split, size, seed))

    def eval_batches(self, split: str, size: int, seed: int, batch_size: int) -> list[Batch]:
        samples = self._subset(split, size, seed)
        return [collate(samples[i : i + batch_size]) for i in range(0, len(samples), batch_size)]

    def metrics(self, outputs: Tensor, batch: Batch) -> MetricTotals:
        result = super().metrics(outputs, batch)
        wrong = ((outputs.argmax(-1) != batch.targets) & batch.mask).any(dim=1).cpu().numpy()
        for task in np.unique(batch.extras["task"]):
            of_task = batch.extras["task"] == task
            result[f"error_qa{int(task)}"] = (100.0 * float(wrong[of_task].sum()), float(of_task.sum()))
        return result

    def summarize(self, values: Mapping[str, float]) -> dict[str, float]:
        errors = [v for k, v in values.items() if k.startswith("error_qa")]
        summary = dict(values)
        summary["mean_error"] = float(np.mean(errors)) if errors else float("nan")
        summary["tasks_solved"] = float(sum(e <= SOLVED_ERROR for e in errors))
        return summary
