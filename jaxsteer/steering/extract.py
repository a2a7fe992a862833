"""Steering-vector extraction: one data type, one registry of methods.

    data = contrast_data(model, tok, pairs=[("I love it.", "I hate it."), ...], read="last")
    vectors = extract("pca", data)                     # [L, d] float32, a direction per layer
    vectors = extract("probe", data)
    vectors = extract("sae", data, sae=sae, layer=12, top=4)
    vectors = extract("supervised", data, model=model, layers=(12,), steps=100)

`contrast_data` reads every layer's activation in one traced pass per batch (`analysis.harvest`):
at the last token (`read="last"`), averaged over the completion (`read="mean"`; over the whole
text when an item has no completion), or averaged over the last k tokens (`read=k`). Items come
as contrastive pairs `(positive, negative)` of texts, pairs `(prompt, positive completion,
negative completion)`, or labelled prompts (`prompts=`, `labels=` with 1 = shows the behaviour).

Every method maps `ContrastData` (plus its own options) to `[L, d]` float32. Mean difference keeps
its natural length; the other methods return unit directions per layer (rescale with
`match_norms` to compare scales across methods). `METHODS` is the public registry;
`register_method` adds one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..analysis.probes import harvest, train_probes
from ..errors import InputError
from ..models.generate import left_pad, pad_id_for, tokenize_prompts
from ..models.interventions import SITE_LAYOUT, check_site
from ..models.params import Model
from ..train.scoring import sequence_logprobs
from ..train.trainable import TrainableConfig, apply_trainable, init_trainable, steering_vectors


@dataclasses.dataclass
class ContrastData:
    """Activations of contrastive items, every layer.

    Attributes:
        acts: `[L, N, d]` float32, read as `read` says.
        labels: `[N]`, 1 = shows the behaviour, 0 = does not.
        pair: `[N]` pair id, -1 for unpaired items.
        site: the site read.
        read: "last", "mean" or an int k (see `read_weights`).
        prompt_ids: the prompt tokens of each item.
        completion_ids: the completion tokens of each item (the supervised method trains on the
            positives' completions).
    """

    acts: np.ndarray
    labels: np.ndarray
    pair: np.ndarray
    site: str
    read: str | int
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]

    @property
    def n_layers(self) -> int:
        """L."""
        return self.acts.shape[0]

    def paired_differences(self) -> np.ndarray:
        """`[L, P, d]`: positive minus negative activation of each pair."""
        pos, neg = {}, {}
        for i, (p, y) in enumerate(zip(self.pair, self.labels, strict=True)):
            if p >= 0:
                (pos if y == 1 else neg)[int(p)] = i
        ids = sorted(set(pos) & set(neg))
        if not ids:
            raise InputError("this method needs contrastive pairs (pairs=...), not unpaired labelled prompts")
        return self.acts[:, [pos[p] for p in ids]] - self.acts[:, [neg[p] for p in ids]]


def _items(pairs, prompts, labels) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
    """(prompt, completion) texts with labels and pair ids, from pairs or labelled prompts."""
    if (pairs is None) == (prompts is None):
        raise InputError(
            "give either pairs=[(positive, negative) or (prompt, positive, negative), ...] "
            "or prompts=[...] with labels=[...]"
        )
    if prompts is not None:
        if labels is None or len(labels) != len(prompts):
            raise InputError(
                f"labelled prompts need one label per prompt ({len(prompts)} prompts, "
                f"{None if labels is None else len(labels)} labels)"
            )
        lab = np.asarray(labels).astype(int)
        if not set(lab.tolist()) <= {0, 1} or len(set(lab.tolist())) != 2:
            raise InputError(f"labels must be 0/1 with both classes present, got {sorted(set(lab.tolist()))}")
        return [(p, "") for p in prompts], lab, np.full(len(prompts), -1)
    items, lab, pair = [], [], []
    for i, p in enumerate(pairs):
        if len(p) == 2:
            items += [(p[0], ""), (p[1], "")]
        elif len(p) == 3:
            items += [(p[0], p[1]), (p[0], p[2])]
        else:
            raise InputError(
                f"pair {i} has {len(p)} parts; expected (positive, negative) or (prompt, positive, negative)"
            )
        lab += [1, 0]
        pair += [i, i]
    if not items:
        raise InputError("no pairs given")
    return items, np.asarray(lab), np.asarray(pair)


def read_weights(prompt_lens: Sequence[int], completion_lens: Sequence[int], width: int, read: str | int) -> np.ndarray:
    """`[N, width]` weights over left-padded rows (prompt then completion, right-aligned) that
    select the tokens `read` names: "last", "mean" (the completion, or the whole row when there
    is none) or an int k (the last k tokens).

    Args:
        prompt_lens: tokens of each row's prompt.
        completion_lens: tokens of each row's completion.
        width: the padded row width.
        read: "last", "mean" or an int k.

    Returns:
        `[N, width]` float32 0/1 weights (a reader averages over the selected tokens).
    """
    n = len(prompt_lens)
    w = np.zeros((n, width), np.float32)
    for i, (p, c) in enumerate(zip(prompt_lens, completion_lens, strict=True)):
        total = p + c
        if read == "last":
            w[i, -1] = 1
        elif read == "mean":
            w[i, width - (c if c else total) :] = 1
        elif isinstance(read, (int, np.integer)) and not isinstance(read, bool) and read >= 1:
            w[i, width - min(int(read), total) :] = 1
        else:
            raise InputError(f"read must be 'last', 'mean' or a positive int k (last k tokens), got {read!r}")
    return w


def contrast_data(
    model: Model,
    tokenizer: Any,
    *,
    pairs: Sequence[Sequence[str]] | None = None,
    prompts: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    read: str | int = "last",
    site: str = "resid_post",
    chat: bool = True,
    batch_size: int = 16,
) -> ContrastData:
    """Tokenize contrastive items (prompt through the chat template when `chat`, completion
    appended as plain tokens) and read `site` at every layer (see the module doc).

    Args:
        model: the model.
        tokenizer: its tokenizer.
        pairs: `(prompt, positive, negative)` triples (or `(positive, negative)` prompts).
        prompts: unpaired items, with `labels`.
        labels: 1 / 0 per item of `prompts`.
        read: which tokens are read: "last", "mean" or the last k.
        site: the site read.
        chat: wrap prompts in the chat template.
        batch_size: items per forward pass.

    Returns:
        The `ContrastData`.
    """
    check_site(site)
    if SITE_LAYOUT[site][0] != 3:
        raise InputError(f"steering vectors are extracted at residual-width sites, got {site!r}")
    items, lab, pair = _items(pairs, prompts, labels)
    prompt_ids = tokenize_prompts(tokenizer, [p for p, _ in items], chat=chat)
    completion_ids = [list(tokenizer(c, add_special_tokens=False)["input_ids"]) if c else [] for _, c in items]
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
    tokens, mask = left_pad(seqs, pad_id_for(model, tokenizer))
    weights = read_weights([len(p) for p in prompt_ids], [len(c) for c in completion_ids], tokens.shape[1], read)
    acts = harvest(model, tokens, attention_mask=mask, site=site, groups={"read": weights}, batch_size=batch_size)
    return ContrastData(acts.values[0], lab, pair, site, read, prompt_ids, completion_ids)


# --------------------------------------------------------------------------- methods


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.where(n > 0, n, 1)).astype(np.float32)


def _orient(directions: np.ndarray, data: ContrastData) -> np.ndarray:
    """Flip each layer's direction so the positives' mean projection exceeds the negatives'."""
    proj = np.einsum("lnd,ld->ln", data.acts, directions)
    gap = proj[:, data.labels == 1].mean(1) - proj[:, data.labels == 0].mean(1)
    return directions * np.where(gap < 0, -1.0, 1.0)[:, None].astype(np.float32)


def mean_difference(data: ContrastData) -> np.ndarray:
    """Mean activation of the positives minus that of the negatives, `[L, d]` (CAA / ActAdd).

    Args:
        data: the contrastive activations.

    Returns:
        `[L, d]` float32.
    """
    pos, neg = data.acts[:, data.labels == 1], data.acts[:, data.labels == 0]
    return (pos.mean(1) - neg.mean(1)).astype(np.float32)


def pca_direction(data: ContrastData, *, center: bool = False) -> np.ndarray:
    """First principal direction of the paired differences per layer (unit, `[L, d]`), signed
    so the positives project higher. `center=False` takes the top right-singular vector of the
    raw differences (the consistent shift between the pair members); `center=True` first
    subtracts their mean, as scikit-learn's PCA does (repeng's `pca_diff`).

    Args:
        data: the contrastive activations (paired).
        center: subtract the differences' mean first.

    Returns:
        `[L, d]` unit vectors.
    """
    diffs = data.paired_differences().astype(np.float64)
    if center:
        diffs = diffs - diffs.mean(1, keepdims=True)
    _, _, vt = np.linalg.svd(diffs, full_matrices=False)
    return _orient(_unit(vt[:, 0]), data)


def probe_direction(data: ContrastData, **train_kwargs) -> np.ndarray:
    """Weight vector of a logistic probe per layer (`analysis.train_probes`; held-out split and
    options as there), in the raw activation space, unit length, pointing to the positives.

    Args:
        data: the contrastive activations.
        **train_kwargs: passed to `analysis.train_probes`.

    Returns:
        `[L, d]` unit vectors.
    """
    result = train_probes(data.acts, data.labels.astype(np.int32), task="classification", **train_kwargs)
    return _orient(result.directions.astype(np.float32), data)  # class 1 (positive) minus class 0


def sae_features(data: ContrastData, sae: Any, layer: int, top: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The `top` SAE latents whose mean activation rises most from negatives to positives at
    `layer`: `(indices [top], mean activation difference [top])`.

    Args:
        data: the contrastive activations.
        sae: a jaxsteer SAE reading `data.site`.
        layer: the layer whose activations it encodes.
        top: how many latents.

    Returns:
        `(indices [top], mean activation difference [top])`.
    """
    from ..sae.arch import encode

    z = np.asarray(encode(sae, jnp.asarray(data.acts[layer], sae.dtype)), np.float32)
    gap = z[data.labels == 1].mean(0) - z[data.labels == 0].mean(0)
    order = np.argsort(-gap)[:top]
    return order, gap[order]


def sae_direction(
    data: ContrastData, *, sae: Any, layer: int, features: Sequence[int] | None = None, top: int = 1
) -> np.ndarray:
    """SAE decoder directions at `layer` (zeros elsewhere; unit length): the decoder rows of
    `features` (summed), or of the `top` latents chosen by `sae_features` (weighted by their
    activation difference). `sae`: a jaxsteer SAE (`sae.load_saelens` reads SAELens folders).

    Args:
        data: the contrastive activations.
        sae: the SAE.
        layer: the layer the direction is placed at.
        features: latents to use (None: the `top` of `sae_features`).
        top: how many latents `sae_features` picks.

    Returns:
        `[L, d]`.
    """
    if not 0 <= layer < data.n_layers:
        raise InputError(f"layer {layer} out of range for {data.n_layers} layers")
    w_dec = np.asarray(sae.params["W_dec"], np.float32)
    if w_dec.shape[1] != data.acts.shape[-1]:
        raise InputError(f"the SAE reads width {w_dec.shape[1]}; the activations have width {data.acts.shape[-1]}")
    if features is None:
        idx, weight = sae_features(data, sae, layer, top)
    else:
        idx = np.asarray(features, int)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= w_dec.shape[0]:
            raise InputError(f"SAE features {idx.tolist()} out of range for {w_dec.shape[0]} latents")
        weight = np.ones(len(idx), np.float32)
    out = np.zeros((data.n_layers, w_dec.shape[1]), np.float32)
    out[layer] = _unit(weight @ w_dec[idx])
    return out


def supervised_vector(
    data: ContrastData,
    *,
    model: Model,
    layers: Sequence[int] | None = None,
    steps: int = 100,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> np.ndarray:
    """A steering vector trained (Adam, full batch) to maximise the log-probability of the
    positives' completions after their prompts: the `steering` trainable of `train` (BiPO/SFT
    style), at `layers` (default all). Returns `[L, d]` (zeros on untrained layers).

    Args:
        data: the contrastive activations (their positives' prompt and completion tokens).
        model: the model.
        layers: the trained layers (default all).
        steps: Adam steps.
        learning_rate: Adam's learning rate.
        seed: the initialisation seed.

    Returns:
        `[L, d]` (zeros on untrained layers).
    """
    rows = [i for i in range(len(data.labels)) if data.labels[i] == 1 and data.completion_ids[i]]
    if not rows:
        raise InputError("the supervised method needs positive completions: pairs=(prompt, positive, negative)")
    cfg = TrainableConfig(kind="steering", layers=None if layers is None else tuple(layers), site=data.site)
    P = max(len(data.prompt_ids[i]) for i in rows)
    C = max(len(data.completion_ids[i]) for i in rows)
    tokens = np.zeros((len(rows), P + C), np.int32)  # prompts end at column P, completions follow
    mask = np.zeros_like(tokens)
    for r, i in enumerate(rows):
        p, c = data.prompt_ids[i], data.completion_ids[i]
        tokens[r, P - len(p) : P + len(c)] = p + c
        mask[r, P - len(p) : P + len(c)] = 1
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    trainable = init_trainable(model, cfg, jax.random.PRNGKey(seed))
    trainable = _fit_supervised(
        model, trainable, tokens, mask, cfg=cfg, prompt_width=P, steps=int(steps), learning_rate=float(learning_rate)
    )
    return np.asarray(steering_vectors(trainable, cfg, model.config.n_layers), np.float32)


@functools.partial(jax.jit, static_argnames=("cfg", "prompt_width", "steps", "learning_rate"))
def _fit_supervised(model, trainable, tokens, mask, *, cfg, prompt_width, steps, learning_rate):
    """Full-batch Adam on the completions' mean negative log-likelihood (the model is an argument,
    not a closure constant, so XLA does not constant-fold the weights)."""
    opt = optax.adam(learning_rate)

    def loss(t):
        run_model, ivs = apply_trainable(model, t, cfg)
        logp, _ = sequence_logprobs(run_model, tokens, mask, ivs, completion_start=prompt_width)
        return -logp.sum() / mask[:, prompt_width:].sum()

    def step(state, _):
        t, o = state
        upd, o = opt.update(jax.grad(loss)(t), o, t)
        return (optax.apply_updates(t, upd), o), None

    (trainable, _), _ = jax.lax.scan(step, (trainable, opt.init(trainable)), None, length=steps)
    return trainable


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "mean_difference": mean_difference,
    "pca": pca_direction,
    "probe": probe_direction,
    "sae": sae_direction,
    "supervised": supervised_vector,
}


def register_method(name: str, fn: Callable[..., np.ndarray]) -> None:
    """Add an extraction method `fn(data: ContrastData, **options) -> [L, d]` under `name`.

    Args:
        name: the method's name in `METHODS`.
        fn: the method.
    """
    if name in METHODS:
        raise InputError(f"an extraction method named {name!r} exists already")
    METHODS[name] = fn


def extract(method: str, data: ContrastData, **options) -> np.ndarray:
    """Steering vectors `[L, d]` float32 by the named method (see `METHODS`).

    Args:
        method: a name of `METHODS`.
        data: the contrastive activations.
        **options: passed to the method.

    Returns:
        `[L, d]` float32.
    """
    if method not in METHODS:
        raise InputError(f"unknown extraction method {method!r}; methods: {', '.join(METHODS)}")
    return np.asarray(METHODS[method](data, **options), np.float32)


def match_norms(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rescale each layer's vector to the length of `reference`'s (e.g. the mean difference), so
    one scale means the same push for every method.

    Args:
        vectors: `[L, d]`.
        reference: `[L, d]`.

    Returns:
        `[L, d]`.
    """
    ref = np.linalg.norm(reference, axis=-1, keepdims=True)
    return (_unit(np.asarray(vectors, np.float32)) * ref).astype(np.float32)


def contrast_vector(
    model: Model,
    tokenizer: Any,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    site: str = "resid_post",
    chat: bool = True,
    read: str | int = "last",
) -> np.ndarray:
    """Mean difference of `positive` and `negative` prompts' activations (last token by default),
    `[L, d]` per layer: the activation-addition recipe in one call.

    Args:
        model: the model.
        tokenizer: its tokenizer.
        positive: prompts that show the behaviour.
        negative: prompts that do not.
        site: the site read.
        chat: wrap prompts in the chat template.
        read: which tokens are read: "last", "mean" or the last k.

    Returns:
        `[L, d]` float32.
    """
    labels = [1] * len(positive) + [0] * len(negative)
    data = contrast_data(
        model, tokenizer, prompts=list(positive) + list(negative), labels=labels, read=read, site=site, chat=chat
    )
    return mean_difference(data)


__all__ = [
    "ContrastData",
    "contrast_data",
    "read_weights",
    "mean_difference",
    "pca_direction",
    "probe_direction",
    "sae_features",
    "sae_direction",
    "supervised_vector",
    "METHODS",
    "register_method",
    "extract",
    "match_norms",
    "contrast_vector",
]
