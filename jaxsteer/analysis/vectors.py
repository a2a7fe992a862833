"""Steering vectors from activations: contrastive (difference-of-means) vectors."""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from ..models.decoder import forward
from ..models.generate import left_pad, tokenize_prompts
from ..models.interventions import SITE_LAYOUT
from ..models.params import Model


def mean_activation(
    model: Model,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    site: str = "resid_post",
    chat: bool = True,
    last_token_only: bool = True,
) -> jnp.ndarray:
    """Mean activation at `site` over prompts, per layer `[L, d]`: at each prompt's last token
    (default) or over all its real tokens."""
    if SITE_LAYOUT.get(site, (0,))[0] != 3:
        raise ValueError(f"mean_activation needs a residual-width site, got {site!r}")
    seqs = tokenize_prompts(tokenizer, prompts, chat=chat)
    toks, mask = left_pad(seqs, tokenizer.pad_token_id or 0)
    _, trace = forward(model, toks, attention_mask=mask, record=(site,), return_logits=False)
    acts = trace[site]  # [L, B, T, d]
    if last_token_only:
        return acts[:, :, -1].mean(axis=1)  # left padding: the last column is every prompt's last token
    w = jnp.asarray(mask, acts.dtype)[None, :, :, None]
    return (acts * w).sum(axis=(1, 2)) / w.sum(axis=(1, 2))


def contrast_vector(
    model: Model,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    site: str = "resid_post",
    chat: bool = True,
) -> np.ndarray:
    """Difference of mean last-token activations, positive minus negative: `[L, d]` per layer
    (the activation-addition recipe; pick a layer and a scale when steering with it)."""
    pos = mean_activation(model, tokenizer, positive, site=site, chat=chat)
    neg = mean_activation(model, tokenizer, negative, site=site, chat=chat)
    return np.asarray(pos - neg)
