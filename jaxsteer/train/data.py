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
import json
import os
import random
import re
import warnings
import zlib
from typing import Any, Iterable, Sequence

import grain

from .rewards import extract_boxed, extract_gsm8k


@dataclasses.dataclass(frozen=True)
class Example:
    """One prompt with its reference answer (a plain, picklable record).

    `answer` is what the reward compares against (a number or LaTeX expression; for countdown the
    JSON task description). `meta` holds anything else (operands, level, full solution, ...)."""

    prompt: str
    answer: str
    meta: dict = dataclasses.field(default_factory=dict, hash=False, compare=True)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, record: dict) -> "Example":
        return cls(str(record["prompt"]), str(record["answer"]), dict(record.get("meta") or {}))


def _as_example(x) -> Example:
    return x if isinstance(x, Example) else Example.from_dict(x)


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
SPLITS = ("all", "train", "test")


def _in_split(key: str, split: str, test_fraction: float) -> bool:
    """Deterministic hash partition of problems, so train and test never share a problem."""
    if split == "all":
        return True
    is_test = (zlib.crc32(key.encode()) % 10_000) < test_fraction * 10_000
    return is_test if split == "test" else not is_test


def _draw_unique(n: int, rng: random.Random, draw, key_of, split: str, test_fraction: float) -> list:
    """Draw n problems, without repeats while the problem space allows it."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out, seen, attempts = [], set(), 0
    max_attempts = 200 * max(n, 1) + 10_000
    while len(out) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"could not draw {n} problems for split={split!r}; the problem space is too small")
        item = draw(rng)
        key = key_of(item)
        if not _in_split(key, split, test_fraction):
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
) -> list[Example]:
    """`n` arithmetic problems with `digits`-digit operands, deterministic in `seed`.

    ops: any of "+", "-", "*", "/" (a string like "+-" works too). Subtraction keeps `a >= b`
    (answers are never negative); division is exact (`a = b * q` with b, q of `digits` digits).
    Prompts: "What is 37 + 48? Answer with just the number." or, with `word_problems`, a one-line
    story ("Ava has 37 apples. Ava gets 48 more apples. ..."). split: "train" / "test" take disjoint
    problem sets (a hash partition of the problems, `test_fraction` of them in test) whatever the
    seeds; "all" ignores it. Problems do not repeat unless the problem space is nearly exhausted.
    """
    ops = tuple(ops)
    bad = [o for o in ops if o not in ARITHMETIC_OPS]
    if bad or not ops:
        raise ValueError(f"ops must be a non-empty subset of {ARITHMETIC_OPS}, got {ops}")
    if digits < 1:
        raise ValueError("digits must be >= 1")
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
    problems = _draw_unique(n, rng, draw, lambda p: f"{p[0]}{p[1]}{p[2]}", split, test_fraction)
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


def _countdown_solve_random(numbers: list[int], rng: random.Random) -> tuple[int, str] | None:
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
) -> list[Example]:
    """`n` Countdown problems: reach a target in `[1, max_target]` from `n_numbers` numbers in
    `[1, max_number]`, each used exactly once, with `+ - * /` and parentheses.

    Every problem is solvable (built from a random expression whose intermediate values are
    positive integers; that solution is in `meta["solution"]`) and the target is never one of the
    numbers. `answer` is the JSON `{"target": t, "numbers": [...]}` that
    `countdown_reward` reads. Deterministic in `seed`; `split` as in `arithmetic_problems`."""
    if n_numbers < 2:
        raise ValueError("n_numbers must be >= 2")

    def draw(rng: random.Random):
        while True:
            nums = [rng.randint(1, max_number) for _ in range(n_numbers)]
            value, expr = _countdown_solve_random(nums, rng)
            if 1 <= value <= max_target and value not in nums:
                return nums, value, expr

    rng = random.Random(seed)
    problems = _draw_unique(n, rng, draw, lambda p: f"{sorted(p[0])}->{p[1]}", split, test_fraction)
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


def _read_records(path: str | os.PathLike) -> list[dict]:
    """Rows of a .jsonl / .json / .parquet file as dicts."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    lower = path.lower()
    if lower.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError as e:  # pragma: no cover
            raise ImportError("reading parquet needs pyarrow (pip install pyarrow)") from e
        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        if lower.endswith(".json"):
            data = json.load(f)
            if isinstance(data, dict):  # {"data": [...]} or column-major {"col": [...]}
                if "data" in data and isinstance(data["data"], list):
                    data = data["data"]
                else:
                    keys = list(data)
                    data = [dict(zip(keys, row)) for row in zip(*(data[k] for k in keys))]
            return list(data)
        rows = []
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i + 1}: not valid JSON ({e})") from None
        return rows


def _strip_thousands(ans: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", ans.strip())


def _gsm8k_examples(rows: Iterable[dict], source: str) -> list[Example]:
    out = []
    for i, row in enumerate(rows):
        ans = extract_gsm8k(str(row["answer"]))
        if ans is None:
            raise ValueError(f"{source}: row {i} has no '#### n' final answer")
        out.append(Example(str(row["question"]), _strip_thousands(ans), {"task": "gsm8k", "solution": str(row["answer"])}))
    return out


def _math_examples(rows: Iterable[dict], source: str) -> list[Example]:
    out, skipped = [], 0
    for row in rows:
        ans = row.get("answer")
        ans = str(ans) if ans not in (None, "") else extract_boxed(str(row["solution"]))
        if ans is None:
            skipped += 1
            continue
        meta = {"task": "math", "solution": str(row["solution"])}
        for k in ("level", "type", "subject", "unique_id"):
            if row.get(k) is not None:
                meta[k] = row[k]
        out.append(Example(str(row["problem"]), ans, meta))
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} rows without a \\boxed{{}} answer")
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


def _parse_kwargs(text: str) -> dict[str, Any]:
    kwargs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise ValueError(f"expected key=value in dataset spec, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        kwargs[k] = tuple(c for c in v if c in ARITHMETIC_OPS) if k == "ops" else _parse_value(v)
    return kwargs


GENERATORS = {"arithmetic": arithmetic_problems, "countdown": countdown_problems}


def load_dataset(spec: str | os.PathLike) -> list[Example]:
    """Examples from a spec string.

    - `"arithmetic:n=2000,digits=2,seed=0,ops=+-,word_problems=true,split=train"`
    - `"countdown:n=1000,n_numbers=4,max_target=100,seed=0"`
    - `"gsm8k:path"`, `"math:path"`: a file in that layout;
    - a path (.jsonl / .json / .parquet): the layout is detected from the columns ("question" +
      "answer": GSM8K; "problem" + "solution": MATH; "prompt" + "answer": plain examples, other
      columns go to meta).
    """
    spec = os.fspath(spec)
    kind, sep, rest = spec.partition(":")
    if kind in GENERATORS:
        kwargs = _parse_kwargs(rest)
        n = kwargs.pop("n", 1000)
        return GENERATORS[kind](n, **kwargs)
    if sep and kind == "gsm8k":
        return load_gsm8k(rest)
    if sep and kind == "math":
        return load_math(rest)
    rows = _read_records(spec)
    cols = set(rows[0]) if rows else set()
    if {"question", "answer"} <= cols:
        return _gsm8k_examples(rows, spec)
    if {"problem", "solution"} <= cols:
        return _math_examples(rows, spec)
    if {"prompt", "answer"} <= cols:
        out = []
        for r in rows:
            meta = dict(r.get("meta") or {})
            meta.update({k: v for k, v in r.items() if k not in ("prompt", "answer", "meta")})
            out.append(Example(str(r["prompt"]), str(r["answer"]), meta))
        return out
    raise ValueError(
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
    num_epochs: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> grain.IterDataset:
    """A deterministic, resumable grain pipeline yielding lists of `batch_size` `Example`s.

    The global stream is `examples` reshuffled every epoch from `seed` (grain's index shuffle),
    repeated `num_epochs` times (None = forever); process `shard_index` of `shard_count` takes
    elements `shard_index, shard_index + shard_count, ...` of it, so processes see disjoint
    examples and together cover every epoch. `iter(loader)` gives a grain `DatasetIterator` with
    `get_state()` / `set_state(state)` (a small dict: the next batch index) for exact resume.
    With finite epochs the last batch may be short unless `drop_remainder`.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")
    if not examples:
        raise ValueError("no examples")
    ds = grain.MapDataset.source([_as_example(e) for e in examples])
    if shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=list)
    # Records are tiny Python objects: read them in the calling thread (no thread pool).
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))


__all__ = [
    "Example",
    "arithmetic_problems",
    "countdown_problems",
    "load_gsm8k",
    "load_math",
    "load_dataset",
    "make_loader",
]
