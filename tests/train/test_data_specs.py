"""Dataset specs and files fail early and by name (issue 11): a bad spec is refused before any
model loads, a bad row names the file, line and field; arbitrary spec strings raise nothing but
the library's own DatasetError (property-based, with hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxsteer.train.data import DatasetError, GENERATORS, check_dataset_spec, load_dataset


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("arithmetic:n=abc", r"n='abc' should be int"),
        ("arithmetic:n=10,digts=2", r"arithmetic has no argument 'digts' \(arguments: n, seed, digits"),
        ("arithmetc:n=10", r"unknown generator 'arithmetc'"),
        ("arithmetic:n=0", r"n=0 is out of range"),
        ("arithmetic:n=5,digits=0", r"digits=0 is out of range"),
        ("arithmetic:n=5,split=dev", r"split='dev' is not one of"),
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
        "arithmetic", {"n": 20, "digits": 2, "seed": 0, "split": "train"})
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
        ([{"question": "q", "answer": "#### 3"}, {"question": None, "answer": "#### 4"}],
         r"d.jsonl:2: field 'question' is null"),
        ([{"problem": "p", "solution": None}], r"d.jsonl:1: field 'solution' is null"),
        ([[1, 2]], r"d.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, needle):
    with pytest.raises(DatasetError, match=needle):
        load_dataset(_jsonl(tmp_path, rows))


def test_directory_and_unknown_suffix_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="is a directory"):
        load_dataset(str(tmp_path))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match=r"expected one of \.jsonl"):
        load_dataset(str(tmp_path / "x.csv"))


KEYS = st.sampled_from(["n", "seed", "digits", "ops", "split", "word_problems", "test_fraction", "n_numbers",
                        "max_target", "bogus", ""])
VALUES = st.one_of(st.integers(-5, 50).map(str), st.text(max_size=6), st.sampled_from(["true", "nan", "1e3", "+-", "train"]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(GENERATORS) + ["gsm8k", "math", "nope", ""]),
       parts=st.lists(st.tuples(KEYS, VALUES), max_size=4), sep=st.sampled_from([":", "", "::"]))
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
