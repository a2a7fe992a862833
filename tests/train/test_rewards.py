"""Answer extraction, normalisation and rewards on a table of tricky strings; never raising. DAPO's
soft overlong penalty by hand at the boundary lengths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jaxsteer.train.rewards import (
    answers_equal,
    correctness_reward,
    countdown_reward,
    extract_answer,
    extract_boxed,
    extract_gsm8k,
    extract_last_number,
    format_reward,
    get_reward_fn,
    normalize_answer,
    overlong_penalty,
    parse_arithmetic,
)

BOXED = [
    ("The answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("done: \\boxed{7} and a truncated \\boxed{12", "7"),  # malformed last box -> previous one
    ("\\boxed{ {3} }", "{3}"),
    ("\\fbox{5}", "5"),
    ("\\boxed 9 apples", "9"),
    ("no box here", None),
    ("\\boxed{", None),
    ("}{\\boxed}{", None),
    ("", None),
]


@pytest.mark.parametrize("text, want", BOXED)
def test_extract_boxed(text, want):
    assert extract_boxed(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("#### -3", "-3"),
        ("#### 1,234\n", "1,234"),
        ("#### 5.", "5"),
        ("a #### 1 then #### 2", "2"),
        ("####", None),
        ("####   \nmore", None),
        ("nothing", None),
    ],
)
def test_extract_gsm8k(text, want):
    assert extract_gsm8k(text) == want


@pytest.mark.parametrize(
    "text, want",
    [
        ("I think 3 plus 4 is 7.", "7"),
        ("costs $1,234.50 in total", "1,234.50"),
        ("so 10-3 = 7", "7"),
        ("the value is -3", "-3"),
        ("then 5-3", "3"),  # binary minus is not a sign
        ("about .5 of it", ".5"),
        ("ratio 3/4", "3/4"),
        ("全角 １２３ digits", "123"),  # full-width digits
        ("minus \u22125", "-5"),  # unicode minus
        ("no digits", None),
        ("", None),
    ],
)
def test_extract_last_number(text, want):
    assert extract_last_number(text) == want


def test_extract_answer_priority():
    assert extract_answer("#### 4 but \\boxed{5} and 6") == "5"
    assert extract_answer("12 steps #### 4, then 6") == "4, then 6"
    assert extract_answer("12 then 6") == "6"
    assert extract_answer("nothing at all") is None
    assert extract_answer("\\boxed{}  8") == "8"  # an empty box is no answer


@pytest.mark.parametrize(
    "raw, want",
    [
        ("$5$", "5"),
        ("\\$5.00", "5"),
        ("1,234", "1234"),
        ("5.0", "5"),
        ("2.50", "2.5"),
        (" 42 ", "42"),
        ("\\text{ 14 apples }", "14"),
        ("12 cm", "12"),
        ("x = 3", "3"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\left(1, 2\\right)", "(1,2)"),
        ("90^\\circ", "90"),
        ("50\\%", "50"),
        ("\\boxed{7}", "7"),
        ("(B)", "b"),
        ("-0", "0"),
        ("+4", "4"),
        (".5", "0.5"),
        ("\u22123", "-3"),
        (None, ""),
    ],
)
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


EQUAL = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\dfrac{1}{2}", "1/2", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("\\frac{-3}{4}", "-0.75", True),
    ("1,234", "1234", True),
    ("$5", "5", True),
    ("5.0", "5", True),
    ("0.3333333", "1/3", True),
    ("0.33", "1/3", False),
    ("12345678", "12345679", False),  # integers compare exactly, no tolerance
    ("5", "-5", False),
    ("\\sqrt{2}", "\\sqrt2", True),
    ("(1,2)", "(1, 2)", True),
    ("Yes", "yes", True),
    ("7", None, False),
    (None, None, False),
    ("", "", False),
    ("1/0", "1/0", True),  # identical strings, no division performed
    ("1/0", "2/0", False),
    ("9" * 5000, "9" * 5000, True),
    ("9" * 5000, "9" * 4999 + "8", False),
]


@pytest.mark.parametrize("a, b, want", EQUAL)
def test_answers_equal(a, b, want):
    assert answers_equal(a, b) is want
    assert answers_equal(b, a) is want


@pytest.mark.parametrize(
    "completion, reference, want",
    [
        ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
        ("Total: 1,234 dollars", "#### 1234", 1.0),
        ("She pays $5.", "5", 1.0),
        ("#### -3", "Reasoning...\n#### -3", 1.0),
        ("The result is 5.0", "5", 1.0),
        ("The result is 6", "5", -1.0),
        ("I don't know.", "5", -1.0),
        ("", "5", -1.0),
        ("\\boxed{x^2+1}", "The solution gives \\boxed{x^2 + 1}.", 1.0),
        ("\\boxed{12", "12", 1.0),  # malformed box: falls back to the last number
        ("答案是 ４２", "42", 1.0),
    ],
)
def test_correctness_reward(completion, reference, want):
    assert correctness_reward("prompt", completion, reference) == want


def test_rewards_never_raise_on_adversarial_text():
    weird = [
        None,
        12,
        b"bytes",
        "\\boxed{" * 10_000,
        "}" * 10_000,
        "{" * 10_000 + "\\boxed{1",
        "\x00\ud800",
        "9" * 100_000,
    ]
    for w in weird:
        for ref in weird + ["5"]:
            assert correctness_reward("p", w, ref) in (1.0, -1.0)
            assert countdown_reward("p", w, ref) in (1.0, -1.0)
            assert format_reward("p", w, ref) in (0.0, 1.0)
    huge = ("lorem ipsum 17 dolor {sit} \\boxed{amet " * 50_000) + "\\boxed{42}"
    assert correctness_reward("p", huge, "42") == 1.0
    assert correctness_reward("p", "\\boxed{" * 200_000, "42") == -1.0  # a quadratic scan would not finish
    assert correctness_reward("p", "7", "7", correct=2.0, wrong=0.0) == 2.0
    assert correctness_reward("p", "8", "7", correct=2.0, wrong=0.0) == 0.0


def test_format_reward():
    assert format_reward("p", "so \\boxed{3}", "") == 1.0
    assert format_reward("p", "#### 3", "") == 1.0
    assert format_reward("p", " 42. ", "") == 1.0
    assert format_reward("p", "I think it is 42", "") == 0.0


# --------------------------------------------------------------------------- countdown

TASK = json.dumps({"target": 24, "numbers": [3, 5, 7, 9]})
PROMPT = "Using the numbers [3, 5, 7, 9], create an equation that equals 24."


@pytest.mark.parametrize(
    "completion, want",
    [
        ("\\boxed{9 * 5 - 7 * 3}", 1.0),
        ("<answer>(9*5)-(7*3)</answer>", 1.0),
        ("Let me think.\n9 * 5 - 7 * 3 = 24", 1.0),
        ("\\boxed{24 = 9 \\times 5 - 7 \\times 3}", 1.0),
        ("\\boxed{9×5−7×3}", 1.0),  # unicode times and minus
        ("\\boxed{9 * 3 - 5 + 7 / 7}", -1.0),  # 7 used twice
        ("\\boxed{9 * 5 - 7 * 3 + 0}", -1.0),  # 0 is not a given number
        ("\\boxed{9 + 7 + 5 + 3}", 1.0),  # = 24, each number once
        ("\\boxed{(9 - 7) * 5 + 3}", -1.0),  # evaluates to 13
        ("\\boxed{(9 - 7) * (5 + 3}", -1.0),  # unbalanced
        ("\\boxed{__import__('os').system('true')}", -1.0),  # never evaluated
        ("\\boxed{3 ** 9}", -1.0),
        ("\\boxed{-3 + 9 + 7 + 5}", -1.0),  # unary minus not allowed
        ("\\boxed{(9 * 5 - 7 * 3) / (9 - 9)}", -1.0),
        ("no expression", -1.0),
        ("", -1.0),
    ],
)
def test_countdown_reward(completion, want):
    assert countdown_reward(PROMPT, completion, TASK) == want


def test_countdown_reward_options_and_prompt_fallback():
    assert countdown_reward(PROMPT, "\\boxed{(5 + 3) * 3}", TASK) == -1.0  # 3 used twice
    assert countdown_reward(PROMPT, "\\boxed{3 * 7 + 3}", TASK, use_all=False) == -1.0
    task = json.dumps({"target": 12, "numbers": [3, 4, 50]})
    assert countdown_reward("", "\\boxed{3 * 4}", task, use_all=False) == 1.0
    assert countdown_reward("", "\\boxed{3 * 4}", task) == -1.0
    # reference not JSON: numbers and target parsed from the prompt
    assert countdown_reward(PROMPT, "\\boxed{9 * 5 - 7 * 3}", "garbage") == 1.0
    assert countdown_reward("p", "\\boxed{1}", "garbage") == -1.0
    # fractions are exact: 8 / (3 - 8 / 3) = 24
    task = json.dumps({"target": 24, "numbers": [3, 3, 8, 8]})
    assert countdown_reward("", "\\boxed{8 / (3 - 8 / 3)}", task) == 1.0


def test_parse_arithmetic():
    assert parse_arithmetic("2 + 3 * 4") == (14, [2, 3, 4])
    assert parse_arithmetic("(2 + 3) * 4")[0] == 20
    assert parse_arithmetic("8 / 3")[0] * 3 == 8
    for bad in ("", "2 +", "2 3", "(2", "2)", "-2", "2 ** 3", "2 / 0", "x", "1" * 20, "(" * 100 + "1" + ")" * 100):
        with pytest.raises(ValueError):
            parse_arithmetic(bad)


def test_get_reward_fn():
    assert get_reward_fn("correctness") is correctness_reward
    assert get_reward_fn("countdown") is countdown_reward
    fn = lambda p, c, r: 0.5  # noqa: E731
    assert get_reward_fn(fn) is fn
    assert get_reward_fn("jaxsteer.train.rewards:format_reward") is format_reward
    assert get_reward_fn("jaxsteer.train.rewards.format_reward") is format_reward
    with pytest.raises(ValueError, match="unknown reward"):
        get_reward_fn("nope")
    with pytest.raises(ValueError, match="callable"):
        get_reward_fn("jaxsteer.train.rewards:RewardFn_missing")


# --------------------------------------------------------------------------- strict vs lenient extraction


@pytest.mark.parametrize(
    "completion, lenient, strict",
    [
        ("The answer is 58", "58", None),  # no box, no ####: strict has no answer
        ("58", "58", None),
        ("so \\boxed{58}. Also 12", "58", "58"),
        ("work... #### 58", "58", "58"),
        ("\\boxed{3} then #### 4", "3", "3"),
        ("no number", None, None),
    ],
)
def test_strict_and_lenient_extraction(completion, lenient, strict):
    assert extract_answer(completion) == lenient
    assert extract_answer(completion, strict=True) == strict


def test_strict_correctness_reward_and_modes():
    from jaxsteer.train.rewards import get_reward_fn, strict_correctness_reward

    assert correctness_reward("", "The sum is 58", "58") == 1.0
    assert strict_correctness_reward("", "The sum is 58", "58") == -1.0
    assert strict_correctness_reward("", "The sum is \\boxed{58}", "58") == 1.0
    assert get_reward_fn("correctness_strict") is strict_correctness_reward
    for fn in (correctness_reward, strict_correctness_reward):
        assert fn.extraction_modes == {"lenient": correctness_reward, "strict": strict_correctness_reward}


def test_evaluation_reports_both_extraction_modes(tiny_model):
    """HeldOut gives the correctness reward's strict and lenient modes to the evaluation, which scores the
    same completions under each (here token rewards standing in for the two modes)."""
    import numpy as np

    from jaxsteer.train.config import TrainConfig
    from jaxsteer.train.data import Example
    from jaxsteer.train.evaluate import HeldOut, format_result
    from jaxsteer.train.rewards import token_reward

    lenient = token_reward(lambda p, c, r: 1.0)
    strict = token_reward(lambda p, c, r: 1.0 if c and c[0] % 2 == 0 else -1.0)
    lenient.extraction_modes = {"lenient": lenient, "strict": strict}
    examples = [Example(f"e{i}", "x", {"prompt_ids": [3 + i, 7, 9]}) for i in range(6)]
    held = HeldOut.from_config(TrainConfig(), examples, lambda e: e.meta["prompt_ids"], None, lenient)
    r = held(tiny_model, (), max_new_tokens=3, batch_size=6, bucket=1, samples=2)
    assert r["greedy_acc"] == r["greedy_acc_lenient"] == 1.0 and r["pass1_lenient"] == 1.0
    assert 0.0 <= r["greedy_acc_strict"] <= 1.0 and len(r["greedy_ci_strict"]) == 2 and "pass1_strict" in r
    assert "strict" in format_result("base", r) and "lenient" in format_result("base", r)
    assert (
        HeldOut.from_config(TrainConfig(), examples, lambda e: [1], None, correctness_reward).settings["modes"]
        == correctness_reward.extraction_modes
    )
    assert np.isfinite(r["greedy_acc_strict"])


# --------------------------------------------------------------------------- overlong penalty (DAPO)


def test_overlong_penalty_at_the_boundaries():
    L_max, L_cache = 20, 4  # punishment starts after 16 tokens, reaches -1 at 20
    lengths = [0, 15, 16, 17, 18, 19, 20, 21]
    want = [0, 0, 0, -0.25, -0.5, -0.75, -1.0, -1.0]
    np.testing.assert_allclose(overlong_penalty(lengths, L_max, L_cache), want)
    np.testing.assert_array_equal(overlong_penalty(lengths, L_max, 0), np.zeros(8))  # off
    # The paper's numbers: L_max 20,480, L_cache 4,096.
    np.testing.assert_allclose(overlong_penalty([16384, 18432, 20480], 20480, 4096), [0, -0.5, -1.0])
