"""Algorithmic tasks for length generalization: train on short inputs, test on longer ones.

An example is laid out as the NoPE study lays it out (Kazemnejad et al. 2023, arXiv 2305.19466):
prompt, separator, target, end token. The loss and both metrics count the answer tokens of the
target and the end token only. A target token that is not an answer is given, not predicted:
associative recall's queries and flip-flop's instructions sit in the target, and the model
answers after each (its value, the bit last written).

Every example is drawn from a seeded generator: nothing is read from disk or downloaded. A
task's `length` is its input's size in the task's own unit (symbols to copy, digits per operand,
key-value pairs, instructions); `sequence_length(length)` is the tokens the model sees.

Token ids: 0 pads, 1 separates, 2 ends; the task's own tokens follow from 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAD, SEP, EOS = 0, 1, 2
SPECIAL_TOKENS = ("<pad>", "<sep>", "<eos>")
FIRST_TASK_TOKEN = len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class Example:
    prompt: tuple[int, ...]
    target: tuple[int, ...]
    answer: tuple[bool, ...]  # per target token: True if the model must produce it, False if given

    @property
    def tokens(self) -> list[int]:
        """prompt, SEP, target, EOS"""
        return [*self.prompt, SEP, *self.target, EOS]

    @property
    def scored(self) -> list[bool]:
        """Per token of `tokens`: whether it is predicted and scored (an answer token or EOS)."""
        return [False] * (len(self.prompt) + 1) + list(self.answer) + [True]


class Task:
    """A family of examples by input length. Subclasses name their tokens (`symbols`) and draw
    one example of a length from a generator (`draw`); the rest is shared.

    train_lengths: [shortest, longest] input length drawn (uniformly) for training.
    test_lengths: input lengths scored after training; or test_lengths_x: multiples of the longest
    training length (rounded), used when test_lengths is null.
    examples_per_length: examples scored at each test length. seed: every example's source.
    """

    name = "task"
    shortest_length = 1  # the shortest input the task can draw

    def __init__(
        self,
        train_lengths: Sequence[int] = (1, 10),
        test_lengths: Sequence[int] | None = None,
        test_lengths_x: Sequence[float] = (1, 1.5, 2, 3, 4),
        examples_per_length: int = 200,
        seed: int = 0,
    ):
        if len(train_lengths) != 2 or not all(isinstance(n, int) for n in train_lengths):
            raise ValueError(f"task.train_lengths must be [shortest, longest] whole numbers, got {list(train_lengths)}")
        shortest, longest = train_lengths
        if not self.shortest_length <= shortest <= longest:
            raise ValueError(
                f"task.train_lengths must satisfy {self.shortest_length} <= shortest <= longest for {self.name}, "
                f"got {list(train_lengths)}"
            )
        self.train_lengths = (shortest, longest)
        if test_lengths is None:
            if not test_lengths_x or any(x <= 0 for x in test_lengths_x):
                raise ValueError(f"task.test_lengths_x must be positive multiples, got {list(test_lengths_x or [])}")
            test_lengths = [max(1, round(x * longest)) for x in test_lengths_x]
        lengths = sorted(set(int(n) for n in test_lengths))
        if not lengths:
            raise ValueError("task.test_lengths: at least one length is needed")
        if lengths[0] < shortest:
            raise ValueError(
                f"task.test_lengths: {lengths[0]} is shorter than the training range {list(train_lengths)}; "
                f"test lengths start at {shortest} or more"
            )
        self.test_lengths = lengths
        if examples_per_length < 1:
            raise ValueError(f"task.examples_per_length must be at least 1, got {examples_per_length}")
        self.examples_per_length = int(examples_per_length)
        self.seed = int(seed)
        self.check_length(max(longest, lengths[-1]))

    # what a subclass defines

    def symbols(self) -> list[str]:
        """The names of the task's own tokens, in id order from FIRST_TASK_TOKEN."""
        raise NotImplementedError

    def draw(self, length: int, rng: np.random.Generator) -> Example:
        raise NotImplementedError

    def check_length(self, length: int) -> None:
        """Refuse a length the task's settings cannot draw (e.g. more keys than the alphabet has)."""

    # shared

    @property
    def vocab_size(self) -> int:
        return FIRST_TASK_TOKEN + len(self.symbols())

    @property
    def vocabulary(self) -> list[str]:
        return [*SPECIAL_TOKENS, *self.symbols()]

    def settings(self) -> dict:
        """What results.json records of the task: its name and settings."""
        return {
            "name": self.name,
            "train_lengths": list(self.train_lengths),
            "test_lengths": list(self.test_lengths),
            "examples_per_length": self.examples_per_length,
            "seed": self.seed,
            "vocab_size": self.vocab_size,
            **self.own_settings(),
        }

    def own_settings(self) -> dict:
        return {}

    def sequence_length(self, length: int) -> int:
        """Tokens of an example of this input length (every task's examples of one length are
        equally long)."""
        return len(self.draw(length, np.random.default_rng(0)).tokens)

    @property
    def train_context(self) -> int:
        """The longest training sequence, less one: the model reads tokens[:-1]."""
        return self.sequence_length(self.train_lengths[1]) - 1

    def training_examples(self, step: int, batch_size: int) -> list[Example]:
        """The examples of training step `step`, a function of the seed and the step alone."""
        return self._at_training_lengths(np.random.default_rng([self.seed, step, 0x7A5C]), batch_size)

    def validation_examples(self, count: int) -> list[Example]:
        """Examples at the training lengths from a stream of their own, the same in every run of
        this seed."""
        return self._at_training_lengths(np.random.default_rng([self.seed, 0x7A11]), count)

    def _at_training_lengths(self, rng: np.random.Generator, count: int) -> list[Example]:
        shortest, longest = self.train_lengths
        return [self.draw(int(rng.integers(shortest, longest + 1)), rng) for _ in range(count)]

    def test_examples(self, length: int) -> list[Example]:
        """The examples scored at a test length: the same in every run of this seed, whatever else
        the run scores."""
        rng = np.random.default_rng([self.seed, length, 0x7E57])
        return [self.draw(length, rng) for _ in range(self.examples_per_length)]


def _tokens(values) -> tuple[int, ...]:
    return tuple(int(v) + FIRST_TASK_TOKEN for v in values)


def _all_answers(target) -> tuple[bool, ...]:
    return (True,) * len(target)


class SymbolTask(Task):
    """A task on strings over an alphabet of `alphabet` symbols (tokens "s0", "s1", ...)."""

    minimum_alphabet = 2

    def __init__(self, alphabet: int = 16, **settings):
        if not isinstance(alphabet, int) or alphabet < self.minimum_alphabet:
            raise ValueError(
                f"task.alphabet must be a whole number of at least {self.minimum_alphabet} "
                f"for {self.name}, got {alphabet}"
            )
        self.alphabet = alphabet
        super().__init__(**settings)

    def symbols(self) -> list[str]:
        return [f"s{i}" for i in range(self.alphabet)]

    def own_settings(self) -> dict:
        return {"alphabet": self.alphabet}

    def draw(self, length, rng):
        string = rng.integers(0, self.alphabet, size=length)
        target = self.transform(string)
        return Example(_tokens(string), _tokens(target), _all_answers(target))

    def transform(self, string: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Copy(SymbolTask):
    """Repeat the input."""

    name = "copy"

    def transform(self, string):
        return string


class Reverse(SymbolTask):
    """The input backwards (also a Chomsky-hierarchy task: reverse string)."""

    name = "reverse"

    def transform(self, string):
        return string[::-1]


class Sort(SymbolTask):
    """The input's symbols in ascending order (Chomsky's bucket sort is this on a small alphabet)."""

    name = "sort"

    def transform(self, string):
        return np.sort(string, kind="stable")


class Duplicate(SymbolTask):
    """The input twice (Chomsky hierarchy: duplicate string, context-sensitive)."""

    name = "duplicate"

    def transform(self, string):
        return np.concatenate([string, string])


class BitTask(Task):
    """A task on bit strings (tokens "0", "1") whose target is one bit."""

    def symbols(self) -> list[str]:
        return ["0", "1"]

    def draw(self, length, rng):
        bits = rng.integers(0, 2, size=length)
        return Example(_tokens(bits), _tokens([self.answer_bit(bits)]), (True,))

    def answer_bit(self, bits: np.ndarray) -> int:
        raise NotImplementedError


class Parity(BitTask):
    """Whether the input has an odd number of ones (Chomsky: parity check, regular; hard for
    transformers at any length, a control)."""

    name = "parity"

    def answer_bit(self, bits):
        return int(bits.sum() % 2)


class EvenPairs(BitTask):
    """Whether the input has an even number of unequal neighbours (01 or 10 pairs): true exactly
    when its first and last bits agree (Chomsky: even pairs, regular)."""

    name = "even_pairs"
    shortest_length = 1

    def answer_bit(self, bits):
        return int(np.count_nonzero(bits[1:] != bits[:-1]) % 2 == 0)


class Addition(Task):
    """Two numbers of `length` digits each (base `base`), least significant digit first, joined
    by "+"; the target is their sum, least significant digit first, in length + 1 digits."""

    name = "addition"

    def __init__(self, base: int = 10, **settings):
        if not isinstance(base, int) or not 2 <= base <= 36:
            raise ValueError(f"task.base must be a whole number from 2 to 36, got {base}")
        self.base = base
        super().__init__(**settings)

    def symbols(self) -> list[str]:
        return [*(np.base_repr(d, 36).lower() for d in range(self.base)), "+"]

    def own_settings(self) -> dict:
        return {"base": self.base}

    def draw(self, length, rng):
        a, b = rng.integers(0, self.base, size=(2, length))
        total, carry = [], 0
        for x, y in zip(a, b, strict=True):  # digit by digit, as written on paper
            carry, digit = divmod(int(x) + int(y) + carry, self.base)
            total.append(digit)
        total.append(carry)
        plus = self.base  # the "+" token's index among the task's symbols
        return Example(_tokens([*a, plus, *b]), _tokens(total), _all_answers(total))


class AssociativeRecall(Task):
    """Multi-query associative recall (Arora et al. 2023, zoology's multiquery_ar): `length`
    key-value pairs with distinct keys, then every key once as a query in a random order, each
    followed by its value. The queries are given; the values are the answers."""

    name = "associative_recall"

    def __init__(self, keys: int = 32, values: int = 32, **settings):
        for key, value in (("keys", keys), ("values", values)):
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"task.{key} must be a whole number of at least 2, got {value}")
        self.keys, self.values = keys, values
        super().__init__(**settings)

    def check_length(self, length):
        if length > self.keys:
            raise ValueError(
                f"task.keys={self.keys} is too small: {length} pairs need {length} distinct keys "
                f"(raise task.keys, or shorten task.test_lengths)"
            )

    def symbols(self) -> list[str]:
        return [f"k{i}" for i in range(self.keys)] + [f"v{i}" for i in range(self.values)]

    def own_settings(self) -> dict:
        return {"keys": self.keys, "values": self.values}

    def draw(self, length, rng):
        keys = rng.choice(self.keys, size=length, replace=False)
        values = self.keys + rng.integers(0, self.values, size=length)
        value_of = dict(zip(keys.tolist(), values.tolist(), strict=True))
        prompt = [token for pair in zip(keys, values, strict=True) for token in pair]
        queries = rng.permutation(keys)
        target = [token for key in queries.tolist() for token in (key, value_of[key])]
        return Example(_tokens(prompt), _tokens(target), (False, True) * length)


class FlipFlop(Task):
    """Flip-flop language modelling (Liu et al. 2023, arXiv 2306.00946): `length` instructions,
    each an operation and a bit: write (w) stores its bit, ignore (i) does nothing, read (r) must
    be followed by the bit last written. The first instruction writes and the last reads; between
    them each writes with p_write, reads with p_read, else ignores. The first write is the prompt;
    the rest is the target, whose read bits are the answers (every other token is given)."""

    name = "flip_flop"
    shortest_length = 2
    WRITE, IGNORE, READ, ZERO, ONE = range(5)

    def __init__(self, p_write: float = 0.1, p_read: float = 0.1, **settings):
        if not (0 <= p_write and 0 <= p_read and p_write + p_read <= 1):
            raise ValueError(
                f"task.p_write and task.p_read must be probabilities summing to at most 1, got {p_write}, {p_read}"
            )
        self.p_write, self.p_read = float(p_write), float(p_read)
        super().__init__(**settings)

    def symbols(self) -> list[str]:
        return ["w", "i", "r", "0", "1"]

    def own_settings(self) -> dict:
        return {"p_write": self.p_write, "p_read": self.p_read}

    def draw(self, length, rng):
        stored = int(rng.integers(0, 2))
        prompt = [self.WRITE, self.ZERO + stored]
        target, answer = [], []
        for n in range(1, length):
            u = rng.random()
            if n == length - 1 or u < self.p_read:
                operation = self.READ
            elif u < self.p_read + self.p_write:
                operation = self.WRITE
            else:
                operation = self.IGNORE
            if operation == self.READ:
                bit = stored
            else:
                bit = int(rng.integers(0, 2))
                if operation == self.WRITE:
                    stored = bit
            target += [operation, self.ZERO + bit]
            answer += [False, operation == self.READ]
        return Example(_tokens(prompt), _tokens(target), tuple(answer))


TASKS = {
    task.name: task
    for task in (Copy, Reverse, Sort, Duplicate, Parity, EvenPairs, Addition, AssociativeRecall, FlipFlop)
}


def chance_exact_match(task: Task, length: int) -> float:
    """Exact match a model that guesses uniformly among the task's tokens would reach (for the
    report's chance line): 1 / vocab per answer token and the end token."""
    answers = sum(task.draw(length, np.random.default_rng(0)).answer) + 1
    return math.pow(1 / task.vocab_size, answers)
