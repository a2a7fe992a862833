"""Token helpers on a tokenizer, in TransformerLens' vocabulary: text -> ids `[B, T]`,
ids or text -> one string per token, ids -> text.

    tokens = jaxsteer.to_tokens(tokenizer, "The capital of France is")   # np.int32 [1, T]
    jaxsteer.to_str_tokens(tokenizer, tokens)    # ['The', ' capital', ' of', ' France', ' is']
    jaxsteer.to_string(tokenizer, tokens[0])     # 'The capital of France is'

No chat template is applied (`generate` applies it to string prompts; see `chat_prompt` there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError


def _need(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise InputError(f"{what} needs a tokenizer (the second value `jaxsteer.load` returns)")


def to_tokens(tokenizer: Any, text: str | Sequence[str], *, prepend_bos: bool = False) -> np.ndarray:
    """Token ids `[B, T]` (int32) of one string (B = 1) or of several strings of equal token length.

    Strings whose token lengths differ raise ValueError (pad them yourself with an
    `attention_mask`, or pass them to `generate`, which pads). `prepend_bos` adds the tokenizer's
    BOS token when it has one and the tokenizer did not add it.

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: one string or several.
        prepend_bos: add BOS when the tokenizer has one and did not add it.

    Returns:
        `[B, T]` int32 ids.
    """
    _need(tokenizer, "to_tokens")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"to_tokens takes a string or a list of strings, got {text!r}")
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    bos = getattr(tokenizer, "bos_token_id", None)
    if prepend_bos:
        if bos is None:
            raise InputError("prepend_bos=True but the tokenizer has no BOS token")
        ids = [row if row[:1] == [bos] else [bos] + row for row in ids]
    lengths = sorted({len(row) for row in ids})
    if len(lengths) > 1:
        raise InputError(
            f"the strings have different token lengths {[len(r) for r in ids]}; tokenize them one "
            "at a time, or pad them with an attention_mask"
        )
    return np.asarray(ids, np.int32)


def to_str_tokens(tokenizer: Any, tokens: Any) -> list[str] | list[list[str]]:
    """One string per token: for a string, a 1-D id sequence or a `[1, T]` array, a list; for a
    `[B, T]` array with B > 1, a list per row.

    Args:
        tokenizer: a Hugging Face tokenizer.
        tokens: a string, ids `[T]` or ids `[B, T]`.

    Returns:
        One decoded string per token (a list per row for B > 1).
    """
    _need(tokenizer, "to_str_tokens")
    if isinstance(tokens, str):
        tokens = to_tokens(tokenizer, tokens)
    ids = np.asarray(tokens)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim == 2:
        return [_decode_each(tokenizer, row) for row in ids]
    if ids.ndim != 1:
        raise InputError(f"to_str_tokens takes ids [T] or [B, T], got shape {ids.shape}")
    return _decode_each(tokenizer, ids)


def _decode_each(tokenizer: Any, ids: np.ndarray) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def to_string(tokenizer: Any, tokens: Any) -> str | list[str]:
    """Decode ids `[T]` to a string (`[B, T]` to a list of strings); special tokens are kept.

    Args:
        tokenizer: a Hugging Face tokenizer.
        tokens: ids `[T]` or `[B, T]`.

    Returns:
        The text, or one per row.
    """
    _need(tokenizer, "to_string")
    ids = np.asarray(tokens)
    if ids.ndim == 2:
        return [tokenizer.decode([int(i) for i in row]) for row in ids]
    if ids.ndim != 1:
        raise InputError(f"to_string takes ids [T] or [B, T], got shape {ids.shape}")
    return tokenizer.decode([int(i) for i in ids])


__all__ = ["to_tokens", "to_str_tokens", "to_string"]
