"""Task generators, GSM8K / MATH loaders on fixture files, and the grain loader (determinism,
sharding, exact resume). Dataset specs and files fail early and by name (issue 11): a bad spec is
refused before any model loads, a bad row names the file, line and field; arbitrary spec strings
raise nothing but the library's own DatasetError (property-based, with hypothesis)."""

from __future__ import annotations

import json
import pickle
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxsteer.train.data import (
    GENERATORS,
    DatasetError,
    Example,
    arithmetic_problems,
    check_dataset_spec,
    countdown_problems,
    load_dataset,
    load_gsm8k,
    load_math,
    make_loader,
    problem_split,
)
from jaxsteer.train.rewards import correctness_reward, countdown_reward

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}


# --------------------------------------------------------------------------- generators


@pytest.mark.parametrize("word", [False, True])
def test_arithmetic_answers_are_correct(word):
    ex = arithmetic_problems(300, seed=3, digits=2, ops=("+", "-", "*", "/"), word_problems=word)
    assert len(ex) == 300 and len({e.prompt for e in ex}) > 250
    for e in ex:
        nums = [int(x) for x in re.findall(r"\d+", e.prompt)]
        op = e.meta["op"]
        if word:
            a, b = nums[:2]
        else:
            m = re.fullmatch(r"What is (\d+) ([-+*/]) (\d+)\? Answer with just the number\.", e.prompt)
            assert m, e.prompt
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            assert 10 <= a <= 99 or op == "/"
            assert 10 <= b <= 99
        assert (a, b, op) == (e.meta["a"], e.meta["b"], e.meta["op"])
        if op == "/":
            assert a % b == 0
        if op == "-":
            assert a >= b
        assert int(e.answer) == OPS[op](a, b)
        assert correctness_reward(e.prompt, e.answer, e.answer) == 1.0
        assert e.prompt.endswith("Answer with just the number.")


def test_arithmetic_determinism_difficulty_and_splits():
    a = arithmetic_problems(50, seed=7, ops="+-")
    assert a == arithmetic_problems(50, seed=7, ops="+-")
    assert a != arithmetic_problems(50, seed=8, ops="+-")
    assert {e.meta["op"] for e in a} == {"+", "-"}
    three = arithmetic_problems(20, seed=0, digits=3)
    assert all(100 <= e.meta["a"] <= 999 for e in three)
    train = {e.prompt for e in arithmetic_problems(1500, seed=0, split="train")}
    test = {e.prompt for e in arithmetic_problems(400, seed=0, split="test")}  # same seed, still disjoint
    assert not train & test
    small = arithmetic_problems(200, seed=0, digits=1)  # 81 distinct problems: repeats allowed when exhausted
    assert len(small) == 200
    with pytest.raises(ValueError, match="ops"):
        arithmetic_problems(3, ops=("^",))


def test_validation_split_is_disjoint_from_train_and_test_and_leaves_test_unchanged():
    kw = {"seed": 0, "val_fraction": 0.1}
    train = {e.prompt for e in arithmetic_problems(1500, split="train", **kw)}
    val = {e.prompt for e in arithmetic_problems(300, split="val", **kw)}
    test = {e.prompt for e in arithmetic_problems(300, split="test", **kw)}
    assert len(val) == 300 and not val & train and not val & test and not train & test
    # the test split does not depend on val_fraction: carving a validation split out of train
    # leaves existing held-out sets (and their numbers) as they were
    assert arithmetic_problems(50, seed=3, split="test") == arithmetic_problems(
        50, seed=3, split="test", val_fraction=0.1
    )
    # the hash partition has the stated shares (2-digit addition: 8100 problems)
    shares = Counter(problem_split(f"{a}+{b}", 0.2, 0.1) for a in range(10, 100) for b in range(10, 100))
    assert abs(shares["test"] / 8100 - 0.2) < 0.02 and abs(shares["val"] / 8100 - 0.1) < 0.02
    # without val_fraction, train keeps the validation problems: the train split must use the same value
    assert val & {e.prompt for e in arithmetic_problems(3000, seed=0, split="train")}
    with pytest.raises(ValueError, match="needs val_fraction > 0"):
        arithmetic_problems(5, split="val")
    with pytest.raises(ValueError, match="leave problems for training"):
        countdown_problems(5, split="train", test_fraction=0.5, val_fraction=0.5)
    assert load_dataset("countdown:n=8,split=val,val_fraction=0.2") == countdown_problems(
        8, split="val", val_fraction=0.2
    )


def test_countdown_problems_are_solvable():
    ex = countdown_problems(100, seed=1, n_numbers=4, max_target=100)
    assert ex == countdown_problems(100, seed=1, n_numbers=4, max_target=100)
    for e in ex:
        task = json.loads(e.answer)
        assert 1 <= task["target"] <= 100 and len(task["numbers"]) == 4
        assert task["target"] not in task["numbers"]
        assert str(task["numbers"]) in e.prompt and str(task["target"]) in e.prompt
        # the recorded solution earns the reward, a wrong one does not
        assert countdown_reward(e.prompt, f"\\boxed{{{e.meta['solution']}}}", e.answer) == 1.0
        assert countdown_reward(e.prompt, "\\boxed{1 + 1}", e.answer) == -1.0
    three = countdown_problems(10, seed=2, n_numbers=3, max_target=50)
    assert all(len(e.meta["numbers"]) == 3 and e.meta["target"] <= 50 for e in three)


def test_example_is_picklable_and_dict_roundtrips():
    e = arithmetic_problems(1)[0]
    assert pickle.loads(pickle.dumps(e)) == e
    assert Example.from_dict(e.to_dict()) == e


# --------------------------------------------------------------------------- files

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A car costs $1,200 more than ...", "answer": "It costs 1,234 dollars.\n#### 1,234"},
    {"question": "Temperature drop?", "answer": "5 - 8 = -3\n#### -3"},
]
MATH_ROWS = [
    {
        "problem": "Compute $1/2 + 0$.",
        "solution": "It is $\\boxed{\\frac{1}{2}}$.",
        "level": "Level 1",
        "type": "Algebra",
    },
    {
        "problem": "Find $x$.",
        "solution": "First \\boxed{2}, then \\boxed{\\{3, 4\\}}.",
        "level": "Level 5",
        "type": "Precalculus",
    },
    {"problem": "No box.", "solution": "The answer is 3.", "level": "Level 2", "type": "Algebra"},
]


def _write(tmp_path, name, rows):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_load_gsm8k(tmp_path, ext):
    path = _write(tmp_path, "train" + ext, GSM8K_ROWS)
    ex = load_gsm8k(path)
    assert [e.answer for e in ex] == ["7", "1234", "-3"]
    assert ex[0].prompt == GSM8K_ROWS[0]["question"] and ex[0].meta["solution"] == GSM8K_ROWS[0]["answer"]
    assert load_dataset(str(path)) == ex  # layout detected from the columns
    assert load_dataset(f"gsm8k:{path}") == ex
    assert correctness_reward(ex[1].prompt, "So the total is $1,234.", ex[1].answer) == 1.0


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_load_math(tmp_path, ext):
    path = _write(tmp_path, "test" + ext, MATH_ROWS)
    with pytest.warns(UserWarning, match="skipped 1"):
        ex = load_math(path)
    assert [e.answer for e in ex] == ["\\frac{1}{2}", "\\{3, 4\\}"]
    assert ex[0].meta["level"] == "Level 1" and ex[1].meta["type"] == "Precalculus"
    with pytest.warns(UserWarning):
        assert load_dataset(str(path)) == ex
    assert correctness_reward(ex[0].prompt, "\\boxed{0.5}", ex[0].answer) == 1.0


def test_load_dataset_specs_and_errors(tmp_path):
    ex = load_dataset("arithmetic:n=20,digits=1,seed=4,ops=+*,word_problems=true,split=train")
    assert ex == arithmetic_problems(20, digits=1, seed=4, ops=("+", "*"), word_problems=True, split="train")
    assert load_dataset("countdown:n=5,n_numbers=3,seed=2") == countdown_problems(5, n_numbers=3, seed=2)
    plain = _write(tmp_path, "plain.jsonl", [{"prompt": "2+2?", "answer": "4", "source": "x"}])
    assert load_dataset(str(plain)) == [Example("2+2?", "4", {"source": "x"})]
    bad = _write(tmp_path, "bad.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="layout"):
        load_dataset(str(bad))
    with pytest.raises(DatasetError, match="missing.jsonl' does not exist"):
        load_dataset(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="key=value"):
        load_dataset("arithmetic:n")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        load_gsm8k(broken)
    nofinal = _write(tmp_path, "nofinal.jsonl", [{"question": "q", "answer": "no final answer"}])
    with pytest.raises(ValueError, match="####"):
        load_gsm8k(nofinal)


# --------------------------------------------------------------------------- loader

EXAMPLES = [Example(f"q{i}", str(i)) for i in range(24)]


def _take(it, n):
    return [[e.answer for e in next(it)] for _ in range(n)]


def test_loader_deterministic_and_reshuffles_each_epoch():
    a = _take(iter(make_loader(EXAMPLES, batch_size=4, seed=5)), 12)
    assert a == _take(iter(make_loader(EXAMPLES, batch_size=4, seed=5)), 12)
    assert a != _take(iter(make_loader(EXAMPLES, batch_size=4, seed=6)), 12)
    epoch1, epoch2 = sum(a[:6], []), sum(a[6:], [])
    assert sorted(epoch1, key=int) == [str(i) for i in range(24)] == sorted(epoch2, key=int)
    assert epoch1 != epoch2
    plain = _take(iter(make_loader(EXAMPLES, batch_size=4, seed=5, shuffle=False)), 2)
    assert plain == [["0", "1", "2", "3"], ["4", "5", "6", "7"]]
    assert all(
        isinstance(e, Example) for e in next(iter(make_loader([e.to_dict() for e in EXAMPLES], batch_size=2, seed=0)))
    )


@pytest.mark.parametrize("count", [2, 3, 5])
def test_loader_shards_are_disjoint_and_cover(count):
    shards = [
        sum(
            (
                b
                for b in (
                    [e.answer for e in batch]
                    for batch in make_loader(
                        EXAMPLES, batch_size=2, seed=1, shard_index=k, shard_count=count, num_epochs=1
                    )
                )
            ),
            [],
        )
        for k in range(count)
    ]
    seen = sum(shards, [])
    assert len(seen) == len(set(seen)) == 24  # disjoint, and every example once
    assert max(map(len, shards)) - min(map(len, shards)) <= 2  # processes take whole batches of 2
    with pytest.raises(ValueError, match="shard_index"):
        make_loader(EXAMPLES, batch_size=2, seed=1, shard_index=count, shard_count=count)


def test_loader_global_batches_do_not_depend_on_the_process_count():
    """Global batch k (the processes' batches in process order) and the iterator state are the
    same on 1, 2 or 4 processes, so a run resumes exactly on another number of processes."""
    one = iter(make_loader(EXAMPLES, batch_size=4, seed=3))
    for count in (2, 4):
        its = [
            iter(make_loader(EXAMPLES, batch_size=4 // count, seed=3, shard_index=k, shard_count=count))
            for k in range(count)
        ]
        ref = iter(make_loader(EXAMPLES, batch_size=4, seed=3))
        for _ in range(9):
            assert sum((next(it) for it in its), []) == next(ref)
        assert {str(it.get_state()) for it in its} == {str(ref.get_state())}
    two = [iter(make_loader(EXAMPLES, batch_size=2, seed=3, shard_index=k, shard_count=2, chunks=2)) for k in range(2)]
    a, b, ref = next(two[0]), next(two[1]), next(one)
    assert [a[0], b[0], a[1], b[1]] == ref  # chunk c (one sampling call) = each process's c-th slice


def test_loader_finite_epochs_and_remainder():
    batches = list(make_loader(EXAMPLES[:10], batch_size=4, seed=0, num_epochs=2))
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    batches = list(make_loader(EXAMPLES[:10], batch_size=4, seed=0, num_epochs=1))
    assert [len(b) for b in batches] == [4, 4, 2]
    batches = list(make_loader(EXAMPLES[:10], batch_size=4, seed=0, num_epochs=1, drop_remainder=True))
    assert [len(b) for b in batches] == [4, 4]


@pytest.mark.parametrize("shard_index", [0, 1])
def test_loader_resume_gives_identical_continuation(shard_index):
    kw = dict(batch_size=3, seed=11, shard_index=shard_index, shard_count=2)
    it = iter(make_loader(EXAMPLES, **kw))
    _take(it, 5)  # crosses an epoch boundary of this shard (12 examples = 4 batches)
    state = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores
    want = _take(it, 7)
    resumed = iter(make_loader(EXAMPLES, **kw))
    resumed.set_state(state)
    assert _take(resumed, 7) == want


# --------------------------------------------------------------------------- dataset specs fail early and by name


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("arithmetic:n=abc", r"n='abc' should be int"),
        ("arithmetic:n=10,digts=2", r"arithmetic has no argument 'digts' \(arguments: n, seed, digits"),
        ("arithmetc:n=10", r"unknown generator 'arithmetc'"),
        ("arithmetic:n=0", r"n=0 is out of range"),
        ("arithmetic:n=5,digits=0", r"digits=0 is out of range"),
        ("arithmetic:n=5,split=dev", r"split='dev' is not one of"),
        ("arithmetic:n=5,split=val", r"split='val' needs val_fraction > 0"),
        ("arithmetic:n=5,ops=xy", r"ops must name some of"),
        ("arithmetic:n=5,seed=1,seed=2", r"'seed' is given twice"),
        ("countdown:n=5,word_problems=true", r"countdown has no argument 'word_problems'"),
        ("gsm8k:/no/such/file.jsonl", r"does not exist"),
        ("data/missing.parquet", r"does not exist"),
        ("", r"empty dataset spec"),
    ],
)
def test_bad_specs_are_named_without_loading_anything(spec, needle):
    with pytest.raises(DatasetError, match=needle):
        check_dataset_spec(spec)


def test_good_specs_parse():
    assert check_dataset_spec("arithmetic:n=20,digits=2,seed=0,split=train") == (
        "arithmetic",
        {"n": 20, "digits": 2, "seed": 0, "split": "train"},
    )
    assert check_dataset_spec("countdown:")[0] == "countdown"


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], r"d.jsonl:2: field 'answer' is missing"),
        ([{"prompt": "a", "answer": None}], r"d.jsonl:1: field 'answer' is null"),
        ([{"prompt": "a", "answer": "  "}], r"d.jsonl:1: field 'answer' is empty"),
        (
            [{"question": "q", "answer": "#### 3"}, {"question": None, "answer": "#### 4"}],
            r"d.jsonl:2: field 'question' is null",
        ),
        ([{"problem": "p", "solution": None}], r"d.jsonl:1: field 'solution' is null"),
        ([[1, 2]], r"d.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, needle):
    with pytest.raises(DatasetError, match=needle):
        load_dataset(_jsonl(tmp_path, rows))


def test_json_columns_load_as_rows_and_unequal_columns_are_refused(tmp_path):
    path = tmp_path / "cols.json"
    path.write_text(json.dumps({"prompt": ["a", "b"], "answer": ["1", "2"]}))
    assert [(e.prompt, e.answer) for e in load_dataset(str(path))] == [("a", "1"), ("b", "2")]
    path.write_text(json.dumps({"prompt": ["a", "b"], "answer": ["1"]}))  # would silently drop "b"
    with pytest.raises(DatasetError, match=r"cols.json: the columns have different lengths"):
        load_dataset(str(path))


def test_directory_and_unknown_suffix_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="is a directory"):
        load_dataset(str(tmp_path))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"expected one of \.jsonl"):
        load_dataset(str(tmp_path / "x.csv"))


KEYS = st.sampled_from(
    ["n", "seed", "digits", "ops", "split", "word_problems", "test_fraction", "n_numbers", "max_target", "bogus", ""]
)
VALUES = st.one_of(
    st.integers(-5, 50).map(str), st.text(max_size=6), st.sampled_from(["true", "nan", "1e3", "+-", "train"])
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(list(GENERATORS) + ["gsm8k", "math", "nope", ""]),
    parts=st.lists(st.tuples(KEYS, VALUES), max_size=4),
    sep=st.sampled_from([":", "", "::"]),
)
def test_spec_parser_raises_only_its_own_error(kind, parts, sep):
    spec = kind + sep + ",".join(f"{k}={v}" for k, v in parts)
    try:
        check_dataset_spec(spec)
    except DatasetError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_arbitrary_strings_raise_only_dataset_errors(text):
    try:
        check_dataset_spec(text)
    except DatasetError:
        pass


@settings(max_examples=60, deadline=None)
@given(digits=st.integers(-2, 3), n=st.integers(-2, 30), ops=st.text(max_size=4))
def test_small_valid_or_invalid_generator_specs_load_or_fail_by_name(digits, n, ops):
    try:
        examples = load_dataset(f"arithmetic:n={n},digits={digits},ops={ops},seed=1")
    except DatasetError:
        return
    assert len(examples) == n
