"""Training data: built-in task generators, GSM8K / MATH file loaders, and a grain loader.

    examples = load_dataset("arithmetic:n=2000,digits=2,seed=0,split=train")
    loader = make_loader(examples, batch_size=8, seed=0, shard_index=jax.process_index(),
                         shard_count=jax.process_count())
    it = iter(loader)
    batch = next(it)                 # a list of `Example`s
    state = it.get_state()           # save with the checkpoint; `it.set_state(state)` resumes exactly

Nothing is downloaded: generators are built in, files are read from local paths (JSONL, JSON or
parquet with the Hugging Face column names).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import random
import re
import warnings
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import grain

from ..errors import InputError, JaxsteerError
from .rewards import extract_boxed, extract_gsm8k


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its reference answer (a plain, picklable record).

    Attributes:
        prompt: the prompt text.
        answer: what the reward compares against (a number or LaTeX expression; for countdown the
            JSON task description).
        meta: anything else (operands, level, full solution, `prompt_ids`, ...).
    """

    prompt: str
    answer: str
    meta: dict = dataclasses.field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict:
        """The record as plain data (`from_dict` reads it back)."""
        return {"prompt": self.prompt, "answer": self.answer, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, record: dict) -> Example:
        """An `Example` from a `to_dict` record (`meta` optional)."""
        return cls(str(record["prompt"]), str(record["answer"]), dict(record.get("meta") or {}))


def _as_example(x) -> Example:
    return x if isinstance(x, Example) else Example.from_dict(x)


class DatasetError(JaxsteerError, ValueError):
    """A dataset spec that does not parse, a missing or unreadable file, or a row without a
    usable field; the message names the spec or the file, the line and the field."""


# --------------------------------------------------------------------------- generators

_NAMES = ("Ava", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Julia", "Kofi", "Lena")
_ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells")
_WORD_TEMPLATES = {
    "+": (
        "{name} has {a} {item}. {name} gets {b} more {item}. How many {item} does {name} have now?",
        "A shop sold {a} {item} in the morning and {b} {item} in the afternoon. How many {item} did it sell in total?",
    ),
    "-": (
        "{name} has {a} {item} and gives {b} of them away. How many {item} does {name} have left?",
        "A box holds {a} {item}. {name} takes out {b} {item}. How many {item} are still in the box?",
    ),
    "*": (
        "{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy in total?",
        "There are {a} rows of {item} with {b} {item} in every row. How many {item} are there?",
    ),
    "/": (
        "{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
        "{a} {item} are packed into bags of {b}. How many bags are filled?",
    ),
}
ARITHMETIC_OPS = ("+", "-", "*", "/")
SPLITS = ("all", "train", "val", "test")


def problem_split(key: str, test_fraction: float, val_fraction: float = 0.0) -> str:
    """Which split a problem belongs to: a deterministic hash partition of the problem space, so
    train, validation and test never share a problem whatever the seeds. The hash's lowest
    `test_fraction` goes to "test", its highest `val_fraction` to "val", the rest to "train"."""
    h = zlib.crc32(key.encode()) % 10_000
    if h < test_fraction * 10_000:
        return "test"
    return "val" if h >= (1.0 - val_fraction) * 10_000 else "train"


def _check_split(split: str, test_fraction: float, val_fraction: float) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    if not 0.0 <= val_fraction < 1.0 or test_fraction + val_fraction >= 1.0:
        raise InputError(
            f"test_fraction + val_fraction must leave problems for training, got {test_fraction} + {val_fraction}"
        )
    if split == "val" and val_fraction <= 0.0:
        raise InputError("split='val' needs val_fraction > 0 (and the train split must use the same val_fraction)")


def _draw_unique(
    n: int, rng: random.Random, draw, key_of, split: str, test_fraction: float, val_fraction: float = 0.0
) -> list:
    """Draw n problems of `split`, without repeats while the problem space allows it."""
    _check_split(split, test_fraction, val_fraction)
    out, seen, attempts = [], set(), 0
    max_attempts = 200 * max(n, 1) + 10_000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise InputError(f"could not draw {n} problems for split={split!r}; the problem space is too small")
        item = draw(rng)
        key = key_of(item)
        if split != "all" and problem_split(key, test_fraction, val_fraction) != split:
            continue
        if key in seen and attempts < 20 * max(n, 1):
            continue
        seen.add(key)
        out.append(item)
    return out


def arithmetic_problems(
    n: int,
    *,
    seed: int = 0,
    digits: int = 2,
    ops: Sequence[str] | str = ("+",),
    word_problems: bool = False,
    split: str = "all",
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
) -> list[Example]:
    """`n` arithmetic problems with `digits`-digit operands, deterministic in `seed`.

    Subtraction keeps `a >= b` (answers are never negative); division is exact (`a = b * q` with b,
    q of `digits` digits). Problems do not repeat unless the problem space is nearly exhausted.

    Args:
        n: problems.
        seed: the draw's seed.
        digits: digits of each operand.
        ops: any of "+", "-", "*", "/" (a string like "+-" works too).
        word_problems: a one-line story ("Ava has 37 apples. Ava gets 48 more apples. ...") instead of
            "What is 37 + 48? Answer with just the number.".
        split: "train" / "val" / "test" take disjoint problem sets (a hash partition of the
            problems, `problem_split`) whatever the seeds; "all" ignores it.
        test_fraction: the test split's share of the problem space.
        val_fraction: the validation split's share (0: no "val" split). Give the train split the
            same value, or it keeps the validation problems.

    Returns:
        The problems, operands in `meta`.
    """
    ops = tuple(ops)
    bad = [o for o in ops if o not in ARITHMETIC_OPS]
    if bad or not ops:
        raise InputError(f"ops must be a non-empty subset of {ARITHMETIC_OPS}, got {ops}")
    if digits < 1:
        raise InputError("digits must be >= 1")
    lo, hi = 10 ** (digits - 1), 10**digits - 1

    def draw(rng: random.Random):
        op = rng.choice(ops)
        if op == "/":
            b, q = rng.randint(max(lo, 2), max(hi, 2)), rng.randint(lo, hi)
            a, ans = b * q, q
        else:
            a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            if op == "-" and a < b:
                a, b = b, a
            ans = {"+": a + b, "-": a - b, "*": a * b}[op]
        return a, op, b, ans

    rng = random.Random(seed)
    problems = _draw_unique(n, rng, draw, lambda p: f"{p[0]}{p[1]}{p[2]}", split, test_fraction, val_fraction)
    out = []
    for a, op, b, ans in problems:
        if word_problems:
            template = rng.choice(_WORD_TEMPLATES[op])
            body = template.format(a=a, b=b, name=rng.choice(_NAMES), item=rng.choice(_ITEMS))
        else:
            body = f"What is {a} {op} {b}?"
        prompt = f"{body} Answer with just the number."
        meta = {"task": "arithmetic", "a": a, "b": b, "op": op, "word_problem": bool(word_problems)}
        out.append(Example(prompt, str(ans), meta))
    return out


def _countdown_solve_random(numbers: list[int], rng: random.Random) -> tuple[int, str]:
    """Combine all numbers with random valid operations (positive integers throughout)."""
    pool = [(v, str(v)) for v in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (x, ex), (y, ey) = pool[i], pool[j]
        choices = [("+", x + y), ("*", x * y)]
        if x > y:
            choices.append(("-", x - y))
        if y != 0 and x % y == 0:
            choices.append(("/", x // y))
        op, value = rng.choice(choices)
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, f"({ex} {op} {ey})")]
    value, expr = pool[0]
    return value, expr[1:-1] if expr.startswith("(") and expr.endswith(")") else expr


def countdown_problems(
    n: int,
    *,
    seed: int = 0,
    n_numbers: int = 4,
    max_target: int = 100,
    max_number: int = 99,
    split: str = "all",
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
) -> list[Example]:
    """`n` Countdown problems: reach a target from numbers, each used once, with `+ - * /` and parentheses.

    Every problem is solvable (built from a random expression whose intermediate values are
    positive integers; that solution is in `meta["solution"]`) and the target is never one of the
    numbers. Deterministic in `seed`.

    Args:
        n: problems.
        seed: the draw's seed.
        n_numbers: numbers per problem (>= 2).
        max_target: targets lie in `[1, max_target]`.
        max_number: numbers lie in `[1, max_number]`.
        split: as in `arithmetic_problems`.
        test_fraction: as in `arithmetic_problems`.
        val_fraction: as in `arithmetic_problems`.

    Returns:
        The problems; `answer` is the JSON `{"target": t, "numbers": [...]}` that `countdown_reward` reads.
    """
    if n_numbers < 2:
        raise InputError("n_numbers must be >= 2")

    def draw(rng: random.Random):
        while True:
            nums = [rng.randint(1, max_number) for _ in range(n_numbers)]
            value, expr = _countdown_solve_random(nums, rng)
            if 1 <= value <= max_target and value not in nums:
                return nums, value, expr

    rng = random.Random(seed)
    problems = _draw_unique(n, rng, draw, lambda p: f"{sorted(p[0])}->{p[1]}", split, test_fraction, val_fraction)
    out = []
    for nums, target, expr in problems:
        prompt = (
            f"Using the numbers {nums}, create an equation that equals {target}. You can use +, -, *, / "
            f"and parentheses, and each number exactly once. Give the final expression in \\boxed{{}}."
        )
        answer = json.dumps({"target": target, "numbers": nums})
        out.append(Example(prompt, answer, {"task": "countdown", "numbers": nums, "target": target, "solution": expr}))
    return out


# --------------------------------------------------------------------------- files


DATA_SUFFIXES = (".jsonl", ".json", ".parquet")


def _check_data_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(
            f"dataset file {path!r} does not exist" + (" (it is a directory)" if os.path.isdir(path) else "")
        )
    if not path.lower().endswith(DATA_SUFFIXES):
        raise DatasetError(f"dataset file {path!r}: expected one of {', '.join(DATA_SUFFIXES)}")


def _read_records(path: str | os.PathLike) -> list[dict]:
    """Rows of a .jsonl / .json / .parquet file as dicts (DatasetError naming the file and line)."""
    path = os.fspath(path)
    _check_data_file(path)
    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        with open(path, encoding="utf-8") as f:
            if lower.endswith(".json"):
                return _json_rows(json.load(f), path)
            rows = []
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DatasetError(f"{path}:{i + 1}: not valid JSON ({e})") from None
                    if not isinstance(row, dict):
                        raise DatasetError(f"{path}:{i + 1}: expected a JSON object, got {type(row).__name__}")
                    rows.append(row)
            return rows
    except DatasetError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, ImportError) as e:  # unreadable / not JSON / bad parquet
        raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e})") from None


def _json_rows(data: Any, path: str) -> list[dict]:
    """A .json file's rows: a list of objects, `{"data": [...]}` or column-major `{"col": [...]}`."""
    if isinstance(data, dict):
        if "data" in data and isinstance(data["data"], list):
            data = data["data"]
        elif all(isinstance(v, list) for v in data.values()):
            keys = list(data)
            lengths = {k: len(data[k]) for k in keys}
            if len(set(lengths.values())) > 1:
                raise DatasetError(f"{path}: the columns have different lengths {lengths}")
            data = [dict(zip(keys, row, strict=True)) for row in zip(*(data[k] for k in keys), strict=True)]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DatasetError(f"{path}: expected a list of objects, {{'data': [...]}} or columns of lists")
    return data


def _field(row: dict, name: str, source: str, line: int) -> str:
    """`row[name]` as a non-empty string; DatasetError naming the file, line and field otherwise."""
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        what = "is missing" if name not in row else "is empty" if value is not None else "is null"
        raise DatasetError(f"{source}:{line}: field {name!r} {what}")
    return str(value)


def _strip_thousands(ans: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", ans.strip())


def _gsm8k_examples(rows: Iterable[dict], source: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        question, solution = _field(row, "question", source, i + 1), _field(row, "answer", source, i + 1)
        ans = extract_gsm8k(solution)
        if ans is None:
            raise DatasetError(f"{source}:{i + 1}: field 'answer' has no '#### n' final answer")
        out.append(Example(question, _strip_thousands(ans), {"task": "gsm8k", "solution": solution}))
    return out


def _math_examples(rows: Iterable[dict], source: str) -> list[Example]:
    out, skipped = [], 0
    for i, row in enumerate(rows):
        problem, solution = _field(row, "problem", source, i + 1), _field(row, "solution", source, i + 1)
        ans = row.get("answer")
        ans = str(ans) if ans not in (None, "") else extract_boxed(solution)
        if ans is None:
            skipped += 1
            continue
        meta = {"task": "math", "solution": solution}
        for k in ("level", "type", "subject", "unique_id"):
            if row.get(k) is not None:
                meta[k] = row[k]
        out.append(Example(problem, ans, meta))
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} rows without a \\boxed{{}} answer", stacklevel=2)
    return out


def load_gsm8k(path) -> list[Example]:
    """GSM8K from a local .jsonl / .json / .parquet file with the HF columns "question", "answer".

    `answer` becomes the number after `####` (thousands separators removed); the full solution is
    kept in `meta["solution"]`."""
    return _gsm8k_examples(_read_records(path), os.fspath(path))


def load_math(path) -> list[Example]:
    """MATH from a local file with the HF columns "problem", "solution" (optional "level", "type").

    `answer` is the last `\\boxed{}` of the solution (or an "answer" column when present, as in
    MATH-500); rows without one are skipped with a warning."""
    return _math_examples(_read_records(path), os.fspath(path))


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


GENERATORS = {"arithmetic": arithmetic_problems, "countdown": countdown_problems}
FILE_LAYOUTS = ("gsm8k", "math")


def _parse_kwargs(text: str, spec: str) -> dict[str, Any]:
    kwargs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DatasetError(f"dataset spec {spec!r}: expected key=value, got {part!r}")
        k, v = (x.strip() for x in part.split("=", 1))
        if k in kwargs:
            raise DatasetError(f"dataset spec {spec!r}: {k!r} is given twice")
        kwargs[k] = tuple(c for c in v if c in ARITHMETIC_OPS) if k == "ops" else _parse_value(v)
    return kwargs


def _check_generator_args(kind: str, kwargs: dict[str, Any], spec: str) -> None:
    """Every argument is one the generator takes, with a value of its default's type."""
    params = inspect.signature(GENERATORS[kind]).parameters
    for k, v in kwargs.items():
        if k not in params:
            names = ", ".join(p for p in params)
            raise DatasetError(f"dataset spec {spec!r}: {kind} has no argument {k!r} (arguments: {names})")
        default = params[k].default
        want = int if k == "n" else type(default) if default is not inspect.Parameter.empty else None
        if want in (int, float, bool, str) and not (type(v) is want or (want is float and type(v) is int)):
            raise DatasetError(f"dataset spec {spec!r}: {k}={v!r} should be {want.__name__}")
        if want is int and isinstance(v, int) and v < (0 if k == "seed" else 1):
            raise DatasetError(f"dataset spec {spec!r}: {k}={v} is out of range")
    if "split" in kwargs and kwargs["split"] not in SPLITS:
        raise DatasetError(f"dataset spec {spec!r}: split={kwargs['split']!r} is not one of {SPLITS}")
    if "test_fraction" in kwargs and not 0.0 < kwargs["test_fraction"] < 1.0:
        raise DatasetError(f"dataset spec {spec!r}: test_fraction must be in (0, 1)")
    try:
        _check_split(kwargs.get("split", "all"), kwargs.get("test_fraction", 0.2), kwargs.get("val_fraction", 0.0))
    except InputError as err:
        raise DatasetError(f"dataset spec {spec!r}: {err}") from None
    if kind == "arithmetic" and "ops" in kwargs and not kwargs["ops"]:
        raise DatasetError(f"dataset spec {spec!r}: ops must name some of {''.join(ARITHMETIC_OPS)}")


def check_dataset_spec(spec: str | os.PathLike) -> tuple[str, Any]:
    """Validate a dataset spec without generating or reading any rows (so a run can refuse a bad
    spec before it loads a model). Returns `(kind, arguments)`: `("arithmetic", {...})`,
    `("gsm8k", path)`, `("file", path)`, ... Raises DatasetError naming what is wrong."""
    spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise DatasetError(f"empty dataset spec {spec!r}")
    kind, sep, rest = spec.partition(":")
    if kind in GENERATORS:
        kwargs = _parse_kwargs(rest, spec)
        _check_generator_args(kind, kwargs, spec)
        return kind, kwargs
    if sep and kind in FILE_LAYOUTS:
        _check_data_file(rest)
        return kind, rest
    if os.path.exists(spec) or not sep or "/" in kind or "\\" in kind or "." in kind:
        _check_data_file(spec)
        return "file", spec
    known = ", ".join(list(GENERATORS) + [f"{k}:PATH" for k in FILE_LAYOUTS])
    raise DatasetError(
        f"dataset spec {spec!r}: unknown generator {kind!r} and no such file (known: {known}, or a path)"
    )


def load_dataset(spec: str | os.PathLike) -> list[Example]:
    """Examples from a spec string (checked first with `check_dataset_spec`).

    - `"arithmetic:n=2000,digits=2,seed=0,ops=+-,word_problems=true,split=train"`
    - `"countdown:n=1000,n_numbers=4,max_target=100,seed=0"`
    - `"gsm8k:path"`, `"math:path"`: a file in that layout;
    - a path (.jsonl / .json / .parquet): the layout is detected from the columns ("question" +
      "answer": GSM8K; "problem" + "solution": MATH; "prompt" + "answer": plain examples, other
      columns go to meta).
    A row missing a field, or with a null or empty one, is a DatasetError naming file, line, field.
    """
    kind, args = check_dataset_spec(spec)
    spec = os.fspath(spec)
    if kind in GENERATORS:
        kwargs = dict(args)
        n = kwargs.pop("n", 1000)
        try:
            return GENERATORS[kind](n, **kwargs)
        except ValueError as e:
            raise DatasetError(f"dataset spec {spec!r}: {e}") from None
    if kind == "gsm8k":
        return load_gsm8k(args)
    if kind == "math":
        return load_math(args)
    rows = _read_records(spec)
    cols = set(rows[0]) if rows else set()
    if {"question", "answer"} <= cols:
        return _gsm8k_examples(rows, spec)
    if {"problem", "solution"} <= cols:
        return _math_examples(rows, spec)
    if {"prompt", "answer"} <= cols:
        out = []
        for i, r in enumerate(rows):
            meta = dict(r.get("meta") or {})
            meta.update({k: v for k, v in r.items() if k not in ("prompt", "answer", "meta")})
            out.append(Example(_field(r, "prompt", spec, i + 1), _field(r, "answer", spec, i + 1), meta))
        return out
    raise DatasetError(
        f"{spec}: cannot tell the dataset layout from columns {sorted(cols)}; expected question/answer "
        f"(GSM8K), problem/solution (MATH) or prompt/answer"
    )


# --------------------------------------------------------------------------- loader


def make_loader(
    examples: Sequence[Example | dict],
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    chunks: int = 1,
    num_epochs: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> grain.IterDataset:
    """A deterministic, resumable grain pipeline yielding lists of `batch_size` `Example`s.

    The global stream is `examples` reshuffled every epoch from `seed` (grain's index shuffle),
    repeated, cut into global batches of `batch_size * shard_count`; each is cut into `chunks` equal
    parts and process `shard_index` takes its slice of every part, so global batch k and each of its
    parts hold the same examples in the same order whatever the process count, and processes get
    disjoint examples. `iter(loader)` gives a grain `DatasetIterator` with `get_state()` /
    `set_state(state)` (a small dict: the next batch index, the same on every process) for exact
    resume, also on another number of processes.

    Args:
        examples: `Example`s or their `to_dict` records.
        batch_size: examples per batch on this process.
        seed: the shuffle's seed.
        shard_index: this process's index.
        shard_count: the number of processes.
        chunks: equal parts of each global batch (e.g. one per sampling call).
        num_epochs: passes over `examples` (None: forever).
        shuffle: reshuffle every epoch (False: in order).
        drop_remainder: with finite epochs, drop a last short batch.

    Returns:
        The grain dataset.
    """
    if batch_size < 1:
        raise InputError("batch_size must be >= 1")
    if not 0 <= shard_index < shard_count:
        raise InputError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if not examples:
        raise InputError("no examples")
    ds = grain.MapDataset.source([_as_example(e) for e in examples])
    if shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.batch(batch_size * shard_count, drop_remainder=drop_remainder, batch_fn=list)
    if batch_size % chunks:
        raise InputError(f"batch_size={batch_size} does not split into {chunks} chunks")
    if shard_count > 1:  # this process's slice of each part of a global batch (records are in memory)
        per, part = batch_size // chunks, batch_size * shard_count // chunks
        lo = shard_index * per
        ds = ds.map(lambda b: sum((b[c * part + lo : c * part + lo + per] for c in range(chunks)), [])).filter(bool)
    # Records are tiny Python objects: read them in the calling thread (no thread pool).
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


__all__ = [
    "DatasetError",
    "Example",
    "check_dataset_spec",
    "arithmetic_problems",
    "countdown_problems",
    "load_gsm8k",
    "load_math",
    "load_dataset",
    "make_loader",
]
