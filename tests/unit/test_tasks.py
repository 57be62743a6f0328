"""The algorithmic tasks' examples against independent solvers: Python's sorted, integer
arithmetic, a direct simulation of flip-flop, a dictionary for associative recall; seeds;
the scored positions; and one-line refusals of impossible settings."""

import numpy as np
import pytest

from poslab.data.tasks import EOS, FIRST_TASK_TOKEN, SEP, TASKS, AssociativeRecall, Example

LENGTHS = (1, 2, 7, 13)


def symbols(tokens):
    return [t - FIRST_TASK_TOKEN for t in tokens]


def examples(name, length, **settings):
    task = TASKS[name](train_lengths=[max(1, TASKS[name].shortest_length), 4], **settings)
    return task, task.test_examples(length)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(
    "name, solve",
    [
        ("copy", lambda s: list(s)),
        ("reverse", lambda s: list(reversed(s))),
        ("sort", lambda s: sorted(s)),
        ("duplicate", lambda s: list(s) + list(s)),
        ("parity", lambda s: [sum(s) % 2]),
        ("even_pairs", lambda s: [int(sum(a != b for a, b in zip(s, s[1:], strict=False)) % 2 == 0)]),
    ],
)
def test_string_tasks_match_an_independent_solver(name, solve, length):
    _, drawn = examples(name, length)
    for example in drawn:
        string = symbols(example.prompt)
        assert len(string) == length
        assert symbols(example.target) == solve(string)
        assert all(example.answer)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("base", [10, 2])
def test_addition_is_integer_addition_least_significant_digit_first(length, base):
    task, drawn = examples("addition", length, base=base)
    for example in drawn:
        prompt = symbols(example.prompt)
        plus = prompt.index(base)  # the "+" symbol follows the digits
        a, b = prompt[:plus], prompt[plus + 1 :]
        assert len(a) == len(b) == length
        value = lambda digits: sum(d * base**i for i, d in enumerate(digits))  # noqa: E731
        total = symbols(example.target)
        assert len(total) == length + 1 and value(total) == value(a) + value(b)
    assert task.vocabulary[FIRST_TASK_TOKEN + base] == "+"


@pytest.mark.parametrize("length", LENGTHS)
def test_associative_recall_answers_each_query_with_its_value(length):
    task, drawn = examples("associative_recall", length, keys=16, values=8)
    for example in drawn:
        prompt = symbols(example.prompt)
        pairs = dict(zip(prompt[0::2], prompt[1::2], strict=True))
        assert len(pairs) == length  # distinct keys
        assert all(k < 16 <= v < 24 for k, v in pairs.items())
        target = symbols(example.target)
        queries, values = target[0::2], target[1::2]
        assert sorted(queries) == sorted(pairs)  # every key asked once
        assert values == [pairs[q] for q in queries]
        assert example.answer == (False, True) * length  # queries given, values answered


def simulate_flip_flop(instructions):
    """Liu et al.'s language, read directly: the bit after each r is the last w's bit."""
    memory, answers = None, []
    for operation, bit in instructions:
        if operation == "w":
            memory = bit
        elif operation == "r":
            answers.append(memory)
    return answers


@pytest.mark.parametrize("length", [2, 3, 9, 40])
def test_flip_flop_reads_return_the_last_written_bit(length):
    task, drawn = examples("flip_flop", length, p_write=0.3, p_read=0.3)
    names = task.vocabulary
    for example in drawn:
        stream = [names[t] for t in (*example.prompt, *example.target)]
        instructions = list(zip(stream[0::2], stream[1::2], strict=True))
        assert len(instructions) == length and instructions[0][0] == "w" and instructions[-1][0] == "r"
        answered = [names[t] for t, a in zip(example.target, example.answer, strict=True) if a]
        assert answered == simulate_flip_flop(instructions)
        # exactly the bits after a read are answers
        reads = [i for i, (op, _) in enumerate(instructions[1:]) if op == "r"]
        assert [i for i, a in enumerate(example.answer) if a] == [2 * i + 1 for i in reads]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_the_same_seed_gives_the_same_examples_and_another_seed_others(name):
    make = lambda seed: TASKS[name](train_lengths=[2, 6], seed=seed)  # noqa: E731
    assert make(0).test_examples(6) == make(0).test_examples(6)
    assert make(0).training_examples(5, 8) == make(0).training_examples(5, 8)
    assert make(0).training_examples(5, 8) != make(0).training_examples(6, 8)
    assert make(0).test_examples(6) != make(1).test_examples(6)
    lengths = {len(e.tokens) for e in make(0).training_examples(0, 64)}
    assert len(lengths) > 1  # lengths drawn across the training range


def test_scored_positions_are_the_answers_and_the_end_token():
    example = Example(prompt=(5, 6, 7), target=(8, 9, 10, 11), answer=(False, True, False, True))
    assert example.tokens == [5, 6, 7, SEP, 8, 9, 10, 11, EOS]
    assert example.scored == [False, False, False, False, False, True, False, True, True]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_vocabulary_covers_every_token_and_the_context_fits_the_longest_training_example(name):
    task = TASKS[name](train_lengths=[2, 8])
    drawn = task.training_examples(0, 256) + task.test_examples(task.test_lengths[-1])
    assert max(max(e.tokens) for e in drawn) < task.vocab_size == len(task.vocabulary)
    assert max(len(e.tokens) - 1 for e in task.training_examples(0, 256)) <= task.train_context
    assert task.test_lengths == [8, 12, 16, 24, 32]  # default: 1, 1.5, 2, 3, 4 x the longest


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TASKS["copy"](train_lengths=[5, 10], test_lengths=[3, 20]), r"task.test_lengths: 3 is shorter"),
        (lambda: TASKS["copy"](alphabet=1), r"task.alphabet must be a whole number of at least 2"),
        (lambda: TASKS["copy"](train_lengths=[10, 5]), r"task.train_lengths must satisfy"),
        (lambda: AssociativeRecall(keys=8, train_lengths=[1, 4]), r"task.keys=8 is too small: 16 pairs"),
        (lambda: TASKS["flip_flop"](train_lengths=[1, 4]), r"task.train_lengths must satisfy 2 <="),
        (lambda: TASKS["flip_flop"](p_write=0.7, p_read=0.5), r"task.p_write and task.p_read"),
        (lambda: TASKS["addition"](base=1), r"task.base"),
        (lambda: TASKS["copy"](examples_per_length=0), r"task.examples_per_length"),
    ],
)
def test_impossible_settings_are_refused_naming_the_key(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_chance_is_one_over_the_vocabulary_per_answer():
    from poslab.data.tasks import chance_exact_match

    task = TASKS["parity"](train_lengths=[1, 4])
    assert chance_exact_match(task, 4) == pytest.approx((1 / task.vocab_size) ** 2)
    assert np.isclose(chance_exact_match(TASKS["copy"](alphabet=4, train_lengths=[1, 4]), 3), (1 / 7) ** 4)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_config_builds_its_task_and_carries_a_recipe(name, tmp_path):
    from hydra.utils import instantiate

    from helpers import compose_config
    from poslab.config import available

    assert sorted(TASKS) == available("task")  # a class for every config, a config for every class
    cfg = compose_config("train", [f"task={name}", "pos_enc=alibi"], tmp_path)
    task = instantiate(cfg.task)
    assert isinstance(task, TASKS[name]) and cfg.data._target_ == "poslab.data.TaskDataModule"
    recipe = (cfg.model.net.n_layer, cfg.model.net.n_embd, cfg.trainer.max_steps, cfg.data.batch_size)
    assert recipe == (4, 64, 3000, 64)
    # the test lengths are 1, 1.5, 2, 3, 4 x the longest training length
    assert task.test_lengths == [10, 15, 20, 30, 40] and task.train_lengths[1] == 10
