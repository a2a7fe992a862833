"""Token helpers (jaxsteer.models.tokens) on the real default model's tokenizer: `to_tokens`,
`to_str_tokens` and `to_string` round trips, batches, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import jaxsteer


def test_token_helpers(real_model):
    _, tok = real_model
    tokens = jaxsteer.to_tokens(tok, "The capital of France is")
    assert tokens.dtype == np.int32 and tokens.shape == (1, 5)
    assert jaxsteer.to_str_tokens(tok, tokens) == ["The", " capital", " of", " France", " is"]
    assert jaxsteer.to_str_tokens(tok, "The capital") == ["The", " capital"]
    assert jaxsteer.to_string(tok, tokens[0]) == "The capital of France is"
    assert jaxsteer.to_string(tok, np.concatenate([tokens, tokens])) == ["The capital of France is"] * 2
    assert jaxsteer.to_tokens(tok, ["a b", "c d"]).shape == (2, 2)
    with pytest.raises(ValueError, match=r"different token lengths \[1, 3\]"):
        jaxsteer.to_tokens(tok, ["a", "a b c"])
    with pytest.raises(ValueError, match="needs a tokenizer"):
        jaxsteer.to_tokens(None, "hi")
