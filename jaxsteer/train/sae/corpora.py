"""Text that ships with the Python install, for runs without a dataset hub.

- `general_text()`: English prose from the Python documentation topics that CPython ships
  (`pydoc_data.topics`, about 460k characters, ~110k SmolLM2 tokens). Technical English, not
  web text: a stand-in for a general corpus that every machine has.
- `arithmetic_text(n)`: arithmetic question/answer pairs from `jaxsteer.train.data`, the domain
  of the RL steering runs (for residual SAEs trained on a narrow domain).
"""

from __future__ import annotations


def general_text() -> list[str]:
    """Documentation topics of the running Python, one document per topic."""
    import pydoc_data.topics as topics

    return [t for _, t in sorted(topics.topics.items())]


def arithmetic_text(n: int = 4000, seed: int = 0) -> list[str]:
    """`n` one-line arithmetic problems with their answers (+, -, *; 2 digits)."""
    from ..data import arithmetic_problems

    probs = arithmetic_problems(n, seed=seed, ops="+-*", split="all")
    return [f"{p.prompt} {p.answer}" for p in probs]


__all__ = ["general_text", "arithmetic_text"]
