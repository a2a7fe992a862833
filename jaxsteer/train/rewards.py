"""Rewards computed in Python on decoded text: answer extraction, normalisation, comparison.

A reward function has the signature `(prompt, completion, reference) -> float` and should never
raise (the built-in ones return the "wrong" value on any unexpected input). Built-ins:

- "correctness": +1 if the completion's final answer (last `\\boxed{}`, else `#### n`, else the last
  number) equals the reference answer, else -1 (the steering paper's reward; lenient extraction);
- "correctness_strict": the same with strict extraction (only `\\boxed{}` / `#### n`, as the papers;
  no last-number fallback). Evaluation of either reports held-out accuracy under both modes;
- "format": 1 if the completion states a final answer (`\\boxed{}`, `#### n`, or is just a
  number), else 0;
- "countdown": +1 if the completion's expression uses the given numbers (each exactly once) with
  `+ - * /` and parentheses and evaluates to the target, else -1 (parsed, never `eval`-ed).

`get_reward_fn` also takes any callable or a dotted path `"pkg.module:function"`. A reward marked
with `@token_reward` takes token ids instead: `(prompt_ids, completion_ids, reference) -> float`
(tokenizer-free tests and tasks). `score_completions` applies either kind to sampled rows.
"""

from __future__ import annotations

import importlib
import json
import math
import re
import unicodedata
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, cast

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np

RewardFn = Callable[[str, str, str], float]

_MAX_NUMBER_CHARS = 64  # longer "numbers" are compared as strings only (no giant ints)

# --------------------------------------------------------------------------- extraction


def _clean_unicode(text: str) -> str:
    """NFKC (full-width digits -> ASCII) and unicode minus signs / dashes -> '-'."""
    text = unicodedata.normalize("NFKC", text)
    return text.replace("\u2212", "-").replace("\u2013", "-").replace("\u2014", "-").replace("\ufe63", "-")


def _braced(text: str, start: int, end: int) -> str | None:
    """Contents of the balanced `{...}` opening at `text[start]` and closing before `end`."""
    depth = 0
    for i in range(start, end):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
    return None


_BOX = re.compile(r"\\(?:boxed|fbox)")


def extract_boxed(text: str) -> str | None:
    """Contents of the last well-formed `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in `text`.

    Nested braces are balanced; a malformed (unclosed) last box falls back to the previous one.
    Returns None when there is none. Linear in the length of `text`."""
    if not isinstance(text, str):
        return None
    # A box left unclosed at j means no brace group opened before j can close after j, so each
    # earlier candidate only needs scanning up to the leftmost failure (`limit`).
    limit = len(text)
    for m in reversed(list(_BOX.finditer(text))):
        j = m.end()
        if j < len(text) and text[j] == "{":
            if j >= limit:
                continue
            inner = _braced(text, j, limit)
            if inner is not None:
                return inner.strip()
            limit = j
        elif j < len(text) and text[j] == " ":
            got = re.match(r" +([^\s$]+)", text[j : j + 200])
            if got:
                return got.group(1)
    return None


def extract_gsm8k(text: str) -> str | None:
    """The answer after the last `####` (GSM8K style), up to the end of that line, or None."""
    if not isinstance(text, str):
        return None
    i = text.rfind("####")
    if i < 0:
        return None
    line = text[i + 4 :].split("\n", 1)[0].strip().rstrip(".").strip()
    return line or None


_NUMBER = re.compile(
    r"(?:(?<![\w)\]])[-+])?"  # a sign, unless it is a binary operator after a number or bracket
    r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"  # 1,234 / 1234 / 12.5 / 3/4
    r"|(?<![\w.])[-+]?\.\d+"  # .5
)


def extract_last_number(text: str) -> str | None:
    """The last number in `text` (integers, `1,234`, decimals, `3/4`, signs), or None."""
    if not isinstance(text, str):
        return None
    last = None
    for m in _NUMBER.finditer(_clean_unicode(text)):
        last = m.group(0)
    return last


def extract_answer(text: str, strict: bool = False) -> str | None:
    """Final answer of a completion: last `\\boxed{}`, else `#### n`, else (lenient mode only) the last number.

    Args:
        text: the completion.
        strict: the papers' extraction: a completion without a box or `####` has no answer.

    Returns:
        The answer's text, or None when there is none.
    """
    for fn in (extract_boxed, extract_gsm8k) if strict else (extract_boxed, extract_gsm8k, extract_last_number):
        ans = fn(text)
        if ans:
            return ans
    return None


# --------------------------------------------------------------------------- normalisation

_TEXT_CMDS = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_REMOVE = ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ", "\\$", "$")
_UNIT_WORDS = re.compile(r"^([-+]?[\d.,/]*\d)\s*(?:[a-zA-Z]+\.?\s*)+$")


def normalize_answer(s) -> str:
    """Canonical string form of an answer for comparison.

    Strips `$`, `\\left`/`\\right`, spacing commands, `\\text{}`-style wrappers (keeping their
    contents), degrees and percent signs, trailing unit words after a number (`5 apples`), a
    leading `x =`, thousands separators (`1,234`), spaces, trailing zeros of decimals (`5.0`,
    `2.50`), trailing periods; maps `\\dfrac`/`\\tfrac` to `\\frac`, `\\frac12` to `\\frac{1}{2}`,
    unicode minus to `-`, full-width digits to ASCII; lowercases."""
    if s is None:
        return ""
    s = _clean_unicode(str(s)).strip()
    if "\\boxed" in s or "\\fbox" in s:
        s = extract_boxed(s) or s
    for tok in _REMOVE:
        s = s.replace(tok, " " if tok == "\\ " else "")
    for _ in range(4):
        new = _TEXT_CMDS.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for tok in ("^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%"):
        s = s.replace(tok, "")
    s = s.strip()
    m = re.match(r"^[a-zA-Z]\s*=\s*(.+)$", s)
    if m:
        s = m.group(1).strip()
    m = _UNIT_WORDS.match(s)
    if m:
        s = m.group(1)
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    # \frac12 -> \frac{1}{2}, \frac{1}2 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt(\d+)", r"\\sqrt{\1}", s)
    s = s.rstrip(".")
    m = re.fullmatch(r"([-+]?)(\d*)\.(\d+)", s)
    if m:
        sign, whole, frac = m.groups()
        frac = frac.rstrip("0")
        s = f"{sign}{whole or '0'}" + (f".{frac}" if frac else "")
    if s.startswith("+"):
        s = s[1:]
    if s in ("-0",):
        s = "0"
    m = re.fullmatch(r"\(([a-zA-Z])\)", s)
    if m:
        s = m.group(1)
    return s.lower()


_DEC = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"


def _to_fraction(s: str) -> tuple[Fraction, bool] | None:
    """`(value, exact_integer_literal)` for a normalised numeric answer, else None."""
    if not s or len(s) > _MAX_NUMBER_CHARS:
        return None
    try:
        if re.fullmatch(_DEC, s):
            return Fraction(s), re.fullmatch(r"[-+]?\d+", s) is not None
        m = re.fullmatch(rf"([-+]?)\\frac\{{({_DEC})\}}\{{({_DEC})\}}", s)
        if m:
            sign = -1 if m.group(1) == "-" else 1
            den = Fraction(m.group(3))
            return (sign * Fraction(m.group(2)) / den, False) if den else None
        m = re.fullmatch(rf"({_DEC})/({_DEC})", s)
        if m:
            den = Fraction(m.group(2))
            return (Fraction(m.group(1)) / den, False) if den else None
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def answers_equal(pred, ref, *, rel_tol: float = 1e-6) -> bool:
    """Whether two answers agree: equal normalised strings, or equal numbers. Never raises.

    Args:
        pred: the extracted answer.
        ref: the reference answer.
        rel_tol: the relative tolerance allowed when either side is not an integer literal
            (`0.3333333` vs `1/3`); integers, decimals, `a/b` and `\\frac{a}{b}` are otherwise
            compared exactly as fractions.

    Returns:
        True when they agree.
    """
    try:
        if pred is None or ref is None:
            return False
        a, b = normalize_answer(pred), normalize_answer(ref)
        if not a or not b:
            return False
        if a == b:
            return True
        fa, fb = _to_fraction(a), _to_fraction(b)
        if fa is None or fb is None:
            return False
        if fa[0] == fb[0]:
            return True
        if fa[1] and fb[1]:
            return False
        x, y = float(fa[0]), float(fb[0])
        return math.isclose(x, y, rel_tol=rel_tol, abs_tol=rel_tol * 1e-3)
    except Exception:  # noqa: BLE001 - a reward must never take the training loop down
        return False


def reference_answer(reference: str) -> str | None:
    """The answer inside a reference: a boxed answer, a `#### n` solution, or the text itself."""
    if reference is None:
        return None
    ref = str(reference)
    return extract_boxed(ref) or extract_gsm8k(ref) or ref.strip() or None


# --------------------------------------------------------------------------- rewards


def correctness_reward(
    prompt: str, completion: str, reference: str, *, correct: float = 1.0, wrong: float = -1.0, strict: bool = False
) -> float:
    """`correct` if the completion's final answer equals the reference answer, else `wrong`. Never raises.

    Args:
        prompt: the prompt (unused).
        completion: the completion.
        reference: a bare answer (`"42"`, `"\\frac{1}{2}"`), a GSM8K solution ending in `#### 42`, or a
            MATH solution with a `\\boxed{}`.
        correct: the reward of a right answer.
        wrong: the reward of anything else.
        strict: accept only a boxed or `####` answer, as the papers do (default lenient: a completion
            without `\\boxed{}` / `#### n` is judged by its last number).

    Returns:
        `correct` or `wrong`.
    """
    try:
        return correct if answers_equal(extract_answer(completion, strict), reference_answer(reference)) else wrong
    except Exception:  # noqa: BLE001
        return wrong


def strict_correctness_reward(prompt: str, completion: str, reference: str, **kw) -> float:
    """`correctness_reward` with strict answer extraction (only `\\boxed{}` / `#### n`)."""
    return correctness_reward(prompt, completion, reference, strict=True, **kw)


# Both extraction modes of the correctness reward, so evaluation can report held-out accuracy under each.
correctness_reward.extraction_modes = strict_correctness_reward.extraction_modes = {
    "lenient": correctness_reward,
    "strict": strict_correctness_reward,
}


def format_reward(prompt: str, completion: str, reference: str, *, correct: float = 1.0, wrong: float = 0.0) -> float:
    """`correct` if the completion states a final answer, else `wrong`. Never raises.

    Args:
        prompt: the prompt (unused).
        completion: the completion: `\\boxed{}`, `#### n`, or one number as the whole completion count.
        reference: the reference (unused).
        correct: the reward of a stated answer.
        wrong: the reward of anything else.

    Returns:
        `correct` or `wrong`.
    """
    try:
        if extract_boxed(completion) or extract_gsm8k(completion):
            return correct
        text = _clean_unicode(completion).strip().rstrip(".")
        return correct if _NUMBER.fullmatch(text) else wrong
    except Exception:  # noqa: BLE001
        return wrong


# ---- countdown: a small safe arithmetic parser (integers, + - * /, parentheses; no eval)

_CD_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()]))")
_CD_MAX_CHARS = 256
_CD_MAX_DEPTH = 32


class _ParseError(ValueError):
    pass


def _arith_tokens(expr: str) -> list[tuple[str, str]]:
    """("num", digits) / ("op", char) tokens of an arithmetic expression."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _CD_TOKEN.match(expr, pos)
        if not m:
            raise _ParseError(f"unexpected character {expr[pos]!r}")
        if m.group(1) is not None:
            if len(m.group(1)) > 9:
                raise _ParseError("number too long")
            tokens.append(("num", m.group(1)))
        else:
            tokens.append(("op", m.group(2)))
        pos = m.end()
    return tokens


def _divide(a: Fraction, b: Fraction) -> Fraction:
    if b == 0:
        raise _ParseError("division by zero")
    return a / b


_LEVELS = ({"+": lambda a, b: a + b, "-": lambda a, b: a - b}, {"*": lambda a, b: a * b, "/": _divide})


def parse_arithmetic(expr: str) -> tuple[Fraction, list[int]]:
    """Evaluate `expr` (non-negative integer literals, binary `+ - * /`, parentheses) exactly.

    Returns `(value, numbers used in order)`. Raises ValueError on anything else (unary signs,
    other characters, division by zero, too long / too deep input)."""
    if len(expr) > _CD_MAX_CHARS:
        raise _ParseError("expression too long")
    tokens = _arith_tokens(expr)
    used: list[int] = []
    i = 0

    def peek():
        return tokens[i] if i < len(tokens) else ("end", "")

    def binary(level, depth):  # left-associative operators of one precedence level
        nonlocal i
        operand = (lambda d: binary(level + 1, d)) if level + 1 < len(_LEVELS) else factor
        value = operand(depth)
        while peek()[0] == "op" and peek()[1] in _LEVELS[level]:
            op = _LEVELS[level][peek()[1]]
            i += 1
            value = op(value, operand(depth))
        return value

    def factor(depth):
        nonlocal i
        if depth > _CD_MAX_DEPTH:
            raise _ParseError("too deeply nested")
        kind, tok = peek()
        if kind == "num":
            i += 1
            used.append(int(tok))
            return Fraction(int(tok))
        if (kind, tok) == ("op", "("):
            i += 1
            value = binary(0, depth + 1)
            if peek() != ("op", ")"):
                raise _ParseError("unbalanced parentheses")
            i += 1
            return value
        raise _ParseError(f"unexpected token {tok!r}")

    if not tokens:
        raise _ParseError("empty expression")
    value = binary(0, 0)
    if i != len(tokens):
        raise _ParseError(f"unexpected token {tokens[i][1]!r}")
    return value, used


def _countdown_task(prompt: str, reference: str) -> tuple[list[int], int]:
    """(numbers, target) from the JSON reference written by `countdown_problems`, else the prompt."""
    try:
        ref = json.loads(reference)
        return [int(n) for n in ref["numbers"]], int(ref["target"])
    except Exception:  # noqa: BLE001
        pass
    nums = re.search(r"\[([\d,\s]+)\]", prompt)
    target = re.search(r"equals?\s+(-?\d+)", prompt)
    if not nums or not target:
        raise InputError("cannot find the numbers and target")
    return [int(n) for n in nums.group(1).replace(",", " ").split()], int(target.group(1))


def _countdown_expression(completion: str) -> str | None:
    text = _clean_unicode(completion)
    cand = extract_boxed(text)
    if cand is None:
        tags = re.findall(r"<answer>(.*?)</answer>", text, flags=re.S)
        cand = tags[-1] if tags else None
    if cand is None:
        lines = [ln for ln in text.strip().splitlines() if re.search(r"\d", ln)]
        cand = lines[-1] if lines else None
    if cand is None:
        return None
    for a, b in (
        ("\\times", "*"),
        ("\\cdot", "*"),
        ("×", "*"),
        ("\\div", "/"),
        ("÷", "/"),
        ("\\left", ""),
        ("\\right", ""),
        ("$", ""),
    ):
        cand = cand.replace(a, b)
    cand = cand.replace("\\(", "").replace("\\)", "")
    sides = [s.strip() for s in cand.split("=")]
    # "expr = target" or "target = expr": keep the side with the most numbers.
    return max(sides, key=lambda s: len(re.findall(r"\d+", s))) if sides else None


def countdown_reward(
    prompt: str, completion: str, reference: str, *, correct: float = 1.0, wrong: float = -1.0, use_all: bool = True
) -> float:
    """`correct` if the completion's expression reaches the target using the given numbers. Never raises.

    The expression is the last `\\boxed{}`, else the last `<answer>...</answer>`, else the last line
    with a digit; of `lhs = rhs` the side with more numbers is used. Allowed: the given integers,
    binary `+ - * /` (exact rational arithmetic), parentheses; `\\times`, `×`, `\\div`, `÷` are
    accepted. No unary minus, no concatenating digits.

    Args:
        prompt: the prompt (the numbers and target are parsed from it when `reference` lacks them).
        completion: the completion.
        reference: the JSON `{"target": t, "numbers": [...]}` of `countdown_problems`.
        correct: the reward of a right expression.
        wrong: the reward of anything else.
        use_all: every number exactly once (else at most once).

    Returns:
        `correct` or `wrong`.
    """
    try:
        numbers, target = _countdown_task(prompt, reference)
        expr = _countdown_expression(completion)
        if not expr:
            return wrong
        value, used = parse_arithmetic(expr)
        pool = sorted(numbers)
        if use_all:
            ok_numbers = sorted(used) == pool
        else:
            remaining = list(pool)
            ok_numbers = True
            for n in used:
                if n in remaining:
                    remaining.remove(n)
                else:
                    ok_numbers = False
                    break
        return correct if ok_numbers and value == target else wrong
    except Exception:  # noqa: BLE001
        return wrong


# --------------------------------------------------------------------------- registry

REWARDS: dict[str, RewardFn] = {
    "correctness": correctness_reward,
    "correctness_strict": strict_correctness_reward,
    "format": format_reward,
    "countdown": countdown_reward,
}


def get_reward_fn(name_or_callable: Callable | str) -> RewardFn:
    """A reward function from a name, a callable, or a dotted path.

    Args:
        name_or_callable: a built-in name ("correctness", "correctness_strict", "format", "countdown"),
            a callable (returned as is), or `"pkg.module:function"` (or `"pkg.module.function"`).

    Returns:
        The reward function.

    Raises:
        InputError: an unknown name, or a path that does not name a callable.
    """
    if callable(name_or_callable):
        return name_or_callable
    name = str(name_or_callable)
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name or "." in name:
        module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
        fn = getattr(importlib.import_module(module), attr, None)
        if not callable(fn):
            raise InputError(f"{name!r} does not name a callable")
        return cast(RewardFn, fn)  # a user's function: its signature is theirs to keep
    raise InputError(f"unknown reward {name!r}; built-ins: {sorted(REWARDS)}, or 'pkg.module:function'")


def token_reward(fn: Callable) -> Callable:
    """Mark a reward function as taking token ids: `fn(prompt_ids, completion_ids, reference)`."""
    fn.uses_tokens = True
    return fn


def overlong_penalty(lengths, max_len: int, buffer: int):
    """DAPO's soft overlong punishment (arXiv 2503.14476, section 3.4), added to the task reward.

    0 for `|y| <= L_max - L_cache`, `((L_max - L_cache) - |y|) / L_cache` inside the last `L_cache`
    tokens (falling linearly to -1 at `L_max`), -1 beyond `L_max`. The paper uses L_max 20,480 and
    L_cache 4,096 (a fifth).

    Args:
        lengths: completion lengths `[B]`.
        max_len: `L_max`, the generation limit (a completion cut off there gets -1).
        buffer: `L_cache` (0 = off: all 0).

    Returns:
        The penalties `[B]`.
    """
    import numpy as np

    n = np.asarray(lengths, np.float32)
    if buffer <= 0:
        return np.zeros_like(n)
    inside = np.minimum(0.0, ((max_len - buffer) - n) / np.float32(buffer))
    return np.where(n > max_len, -1.0, inside).astype(np.float32)


def score_completions(reward_fn: Callable, examples, prompt_ids, out, repeats: int = 1) -> np.ndarray:
    """Rewards of sampled completions for rows `[e0 x repeats, e1 x repeats, ...]`.

    Args:
        reward_fn: a text reward, or a token reward (`@token_reward`).
        examples: the examples of the rows (each `repeats` times in a row).
        prompt_ids: their prompts' token ids (for token rewards).
        out: a `Generation`-like object: tokens `[B, N]`, lengths `[B]`, texts or None.
        repeats: completions per example.

    Returns:
        The rewards `[B]` (float32).

    Raises:
        InputError: a text reward without decoded texts (no tokenizer).
    """
    import numpy as np

    rewards = np.zeros(len(out.tokens), np.float32)
    tokens_based = getattr(reward_fn, "uses_tokens", False)
    for i in range(len(out.tokens)):
        ex = examples[i // repeats]
        if tokens_based:
            comp = out.tokens[i, : out.lengths[i]].tolist()
            rewards[i] = float(reward_fn(list(prompt_ids[i // repeats]), comp, ex.answer))
        else:
            if out.texts is None:
                raise InputError("a text reward needs a tokenizer; mark token-id rewards with @token_reward")
            rewards[i] = float(reward_fn(ex.prompt, out.texts[i], ex.answer))
    return rewards


__all__ = [
    "RewardFn",
    "token_reward",
    "score_completions",
    "overlong_penalty",
    "extract_gsm8k",
    "extract_boxed",
    "extract_last_number",
    "extract_answer",
    "normalize_answer",
    "answers_equal",
    "reference_answer",
    "correctness_reward",
    "strict_correctness_reward",
    "format_reward",
    "countdown_reward",
    "parse_arithmetic",
    "get_reward_fn",
]
