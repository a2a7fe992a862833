"""Evaluate steering methods on one footing: sweep layer x scale, score the task and the side
effects, pick each method's scale on validation, report on test.

    task = load_task("sentiment")                         # or arithmetic_task(), or a JSON path
    result = sweep(model, tok, task, methods=("mean_difference", "pca", "probe"),
                   layers=(6, 10, 14), scales=(0, 2, 4, 8), vectors={"rl": np.load("rl.npy")})
    print(result.table()); result.plot("sweep.png"); result.save("sweep.json")

Every (method, layer, scale) becomes one row of a `RowSteer` bank, so one compiled `generate`
serves the whole sweep (chunks of `rows` rows). Extracted vectors are rescaled to the mean
difference's length at each layer (`match_norms`), so a scale means the same push for every
method; vectors given in `vectors=` (e.g. RL- or ES-trained, `[L, d]`) are used as they are, at
their own layers (`layer = -1` in the table), scale 1 being the trained vector. Affine maps given
in `maps=` (LinEAS, `steering.lineas`) join the same sweep as a per-row `Affine` bank: at
strength s a map becomes `x -> x + s * (map(x) - x)` (s = 1 the trained map), vector rows carry
the identity map and map rows a zero vector.

Scores: the task's (lexicon sentiment, or arithmetic correctness) on greedy completions of the
validation and test prompts; side effects: KL(unsteered || steered) of the next-token
distributions at every real token of the neutral (validation) prompts, and perplexity of the
steered model on a general text sample (`train.sae.corpora.general_text`, the Python docs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..models.controls import RowSteer
from ..models.decoder import forward
from ..models.generate import generate, left_pad, pad_id_for, tokenize_prompts
from ..models.interventions import Affine
from ..models.params import Model
from .extract import contrast_data, extract, match_norms

TASKS_DIR = os.path.join(os.path.dirname(__file__), "tasks")


@dataclasses.dataclass
class Task:
    """A steering task: prompts to extract from and to steer, and how completions are scored.

    Attributes:
        name: the task's name.
        pairs: contrastive `(prompt, positive, negative)` triples to extract from.
        validation: prompts to pick scales on.
        test: prompts to report on.
        scorer: "lexicon" (the fraction of completions whose positive-word count exceeds their
            negative-word count) or "correctness" (arithmetic answers against `references`).
        lexicon: `{"positive": [...], "negative": [...]}` words (scorer "lexicon").
        references: the answer per prompt (scorer "correctness").
        prompt_template: a format with `{prompt}` that replaces the tokenizer's chat template when set.
        description: a line for reports.
    """

    name: str
    pairs: list[tuple[str, str, str]]
    validation: list[str]
    test: list[str]
    scorer: str = "lexicon"
    lexicon: dict[str, list[str]] | None = None
    references: dict[str, str] | None = None
    prompt_template: str | None = None
    description: str = ""

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> float:
        """The task score of `completions` to `prompts` (a fraction in [0, 1])."""
        if self.scorer == "lexicon":
            if self.lexicon is None:
                raise InputError(f"task {self.name!r}: the lexicon scorer needs a lexicon")
            lexicon = self.lexicon
            pos, neg = (set(lexicon[k]) for k in ("positive", "negative"))
            hits = []
            for text in completions:
                words = re.findall(r"[a-z']+", text.lower())
                hits.append(sum(w in pos for w in words) > sum(w in neg for w in words))
            return float(np.mean(hits))
        from ..train.rewards import correctness_reward

        if self.references is None:
            raise InputError(f"task {self.name!r}: the {self.scorer} scorer needs references")
        refs = self.references
        return float(
            np.mean([correctness_reward(p, c, refs[p]) > 0 for p, c in zip(prompts, completions, strict=True)])
        )

    def extraction_pairs(self) -> tuple[list[tuple[str, str, str]], bool]:
        """`(pairs, chat)` for `contrast_data`: the pairs with `prompt_template` applied (chat=False),
        or as they are for the tokenizer's chat template (chat=True)."""
        if self.prompt_template is None:
            return list(self.pairs), True
        return [(self.prompt_template.format(prompt=p), a, b) for p, a, b in self.pairs], False

    def encode(self, tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt token ids (through `prompt_template`, else the chat template)."""
        if self.prompt_template:
            return [
                list(tokenizer(self.prompt_template.format(prompt=p), add_special_tokens=False)["input_ids"])
                for p in prompts
            ]
        return tokenize_prompts(tokenizer, prompts)


def load_task(spec: str) -> Task:
    """A shipped task by name (`sentiment`; `arithmetic` builds `arithmetic_task()`) or a JSON file
    with the fields of `Task`.

    Args:
        spec: a shipped task's name or a JSON file path.

    Returns:
        The `Task`.
    """
    if spec == "arithmetic":
        return arithmetic_task()
    path = spec if os.path.exists(spec) else os.path.join(TASKS_DIR, f"{spec}.json")
    if not os.path.exists(path):
        shipped = sorted(f[:-5] for f in os.listdir(TASKS_DIR) if f.endswith(".json"))
        raise InputError(f"unknown task {spec!r}: not a file, and the shipped tasks are {shipped + ['arithmetic']}")
    with open(path) as fh:
        data = json.load(fh)
    fields = {f.name for f in dataclasses.fields(Task)}
    unknown = set(data) - fields
    if unknown:
        raise InputError(f"{path}: unknown task fields {sorted(unknown)}")
    data["pairs"] = [tuple(p) for p in data["pairs"]]
    return Task(**data)


ARITHMETIC_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"  # the RL runs' format


def arithmetic_task(n_pairs: int = 32, n_val: int = 32, n_test: int = 64, seed: int = 0) -> Task:
    """2-digit addition (as `experiments/smollm2_arithmetic_steering.yaml` trains it): pairs are a
    training problem with its right answer and a wrong one; validation and test are held-out
    problems scored by correctness.

    Args:
        n_pairs: contrastive pairs.
        n_val: validation problems.
        n_test: test problems.
        seed: draws the problems.

    Returns:
        The `Task` (scorer "correctness").
    """
    from ..train.data import arithmetic_problems

    rng = np.random.default_rng(seed)
    train = arithmetic_problems(n_pairs, seed=seed, split="train")
    held = arithmetic_problems(n_val + n_test, seed=seed + 1, split="test")
    pairs = [(e.prompt, e.answer, str(int(e.answer) + int(rng.choice([-10, -1, 1, 10])))) for e in train]
    return Task(
        "arithmetic",
        pairs,
        [e.prompt for e in held[:n_val]],
        [e.prompt for e in held[n_val:]],
        scorer="correctness",
        references={e.prompt: e.answer for e in held},
        prompt_template=ARITHMETIC_TEMPLATE,
    )


# --------------------------------------------------------------------------- measuring


def _padded(seqs: list[list[int]], pad: int) -> tuple[jax.Array, jax.Array]:
    toks, mask = left_pad(seqs, pad)
    return jnp.asarray(toks), jnp.asarray(mask)


def row_interventions(bank: Any, index: jax.Array, map_site: str = "mlp_in") -> tuple:
    """The interventions of bank rows `index`: a `RowSteer` of the vectors, and a per-row `Affine`
    at `map_site` when the bank is `{"vectors", "scale", "shift"}` (each `[K, L, d]`).

    Args:
        bank: vectors `[K, L, d]` or `{"vectors", "scale", "shift"}`.
        index: `[B]` bank rows, one per batch row.
        map_site: where the affine maps act.

    Returns:
        The interventions, a tuple.
    """
    if isinstance(bank, dict):
        return (
            RowSteer(bank["vectors"], index=index),
            Affine(bank["scale"], bank["shift"], index=index, site=map_site),
        )
    return (RowSteer(bank, index=index),)


def _bank_size(bank: Any) -> int:
    return int(jax.tree_util.tree_leaves(bank)[0].shape[0])


@functools.partial(jax.jit, static_argnames=("map_site",))
def _kl_and_nll(model, bank, index, tokens, mask, base_logp, map_site="mlp_in"):
    """Per row: mean KL(base || steered) over real positions, and mean next-token NLL."""
    logits, _ = forward(model, tokens, attention_mask=mask, interventions=row_interventions(bank, index, map_site))
    logp = jax.nn.log_softmax(logits[:, :-1])
    m = (mask[:, :-1] * mask[:, 1:]).astype(jnp.float32)
    kl = (jnp.exp(base_logp) * (base_logp - logp)).sum(-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    return (kl * m).sum(1) / m.sum(1), (nll * m).sum(1) / m.sum(1)


def side_effects(
    model: Model, bank: Any, neutral: tuple, text: tuple, rows: int = 16, map_site: str = "mlp_in"
) -> tuple[np.ndarray, np.ndarray]:
    """`(kl [K], perplexity [K])` for each vector of `bank [K, L, d]` (the unsteered model is a
    zero vector; a dict bank carries affine maps too, see `row_interventions`): KL from the
    unsteered model on the `neutral` prompts `(tokens, mask)` and perplexity on `text` windows.

    Args:
        model: the model.
        bank: vectors `[K, L, d]` or a dict bank.
        neutral: `(tokens, mask)` of neutral prompts.
        text: `(tokens, mask)` of general text windows.
        rows: batch rows per forward pass.
        map_site: where a dict bank's affine maps act.

    Returns:
        `(kl [K], perplexity [K])`.
    """
    K = _bank_size(bank)
    kls, nlls = np.zeros(K), np.zeros(K)
    for which, (tokens, mask) in (("kl", neutral), ("ppl", text)):
        n = tokens.shape[0]
        base, _ = forward(model, tokens, attention_mask=mask)
        base_logp = jax.nn.log_softmax(base[:, :-1])
        per = max(1, rows // n)
        tokens_r, mask_r, base_r = (jnp.tile(a, (per,) + (1,) * (a.ndim - 1)) for a in (tokens, mask, base_logp))
        for ks in _chunks(K, per):
            kl, nll = _kl_and_nll(model, bank, jnp.asarray(np.repeat(ks, n)), tokens_r, mask_r, base_r, map_site)
            value = np.asarray(kl if which == "kl" else nll).reshape(per, n).mean(1)
            (kls if which == "kl" else nlls)[ks] = value
    return kls, np.exp(nlls)


def _chunks(K: int, per: int):
    """Index chunks of exactly `per` configurations (the last padded by repeating its last one),
    so every chunk runs the same compiled program."""
    for k0 in range(0, K, per):
        ks = np.arange(k0, min(K, k0 + per))
        yield np.concatenate([ks, np.full(per - len(ks), ks[-1])])


def task_scores(
    model: Model,
    tokenizer: Any,
    task: Task,
    prompts: Sequence[str],
    bank: Any,
    *,
    max_new_tokens: int = 24,
    rows: int = 96,
    desc: str = "",
    map_site: str = "mlp_in",
) -> np.ndarray:
    """The task score of greedy completions to `prompts` under each row of `bank` (vectors
    `[K, L, d]`, or a dict bank with affine maps, see `row_interventions`).

    Args:
        model: the model.
        tokenizer: its tokenizer.
        task: the task (its scorer).
        prompts: the prompts completed.
        bank: vectors `[K, L, d]` or a dict bank.
        max_new_tokens: tokens per completion.
        rows: batch rows per `generate` call.
        desc: the progress bar's label.
        map_site: where a dict bank's affine maps act.

    Returns:
        `[K]` scores.
    """
    ids = task.encode(tokenizer, prompts)
    K, n = _bank_size(bank), len(ids)
    per = max(1, rows // n)
    out = np.zeros(K)
    for ks in tqdm(list(_chunks(K, per)), desc=desc or "steered generation", leave=False):
        gen = generate(
            model,
            ids * per,
            tokenizer=tokenizer,
            max_new_tokens=max_new_tokens,
            greedy=True,
            interventions=row_interventions(bank, jnp.asarray(np.repeat(ks, n)), map_site),
        )
        texts = gen.texts
        assert texts is not None  # generate decodes when given a tokenizer
        for j, k in enumerate(ks):
            out[k] = task.score(prompts, texts[j * n : (j + 1) * n])
    return out


# --------------------------------------------------------------------------- the sweep


@dataclasses.dataclass
class SweepResult:
    """Every configuration of a `sweep` and the scale picked per method and layer.

    Attributes:
        task: the task's name.
        rows: one dict per configuration: method, layer, scale, validation score, KL, perplexity.
        best: per method and layer, the scale picked on validation with its test score.
        baseline: the unsteered model's scores.
    """

    task: str
    rows: list[dict]
    best: list[dict]
    baseline: dict

    def table(self) -> str:
        """The picked configurations as a markdown table (unsteered first)."""
        b = self.baseline
        lines = [
            "| method | layer | scale | val score | test score | KL (neutral) | perplexity |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| unsteered | - | 0 | {b['val']:.3f} | {b['test']:.3f} | 0 | {b['ppl']:.2f} |",
        ]
        for r in self.best:
            layer = "own" if r["layer"] < 0 else r["layer"]
            lines.append(
                f"| {r['method']} | {layer} | {r['scale']:g} | {r['val']:.3f} | {r['test']:.3f} | "
                f"{r['kl']:.4f} | {r['ppl']:.2f} |"
            )
        return "\n".join(lines)

    def plot(self, path: str) -> str:
        """Validation score and KL against scale, one line per method and layer."""
        from ..analysis._common import new_figure, save_figure

        fig = new_figure(10, 4)
        ax_s, ax_k = fig.subplots(1, 2)
        keys = sorted({(r["method"], r["layer"]) for r in self.rows}, key=str)
        for method, layer in keys:
            rs = sorted(
                (r for r in self.rows if r["method"] == method and r["layer"] == layer), key=lambda r: r["scale"]
            )
            label = f"{method} @ {'own' if layer < 0 else layer}"
            ax_s.plot([r["scale"] for r in rs], [r["val"] for r in rs], marker="o", label=label)
            ax_k.plot([r["scale"] for r in rs], [r["kl"] for r in rs], marker="o", label=label)
        ax_s.axhline(self.baseline["val"], color="grey", ls="--", label="unsteered")
        ax_s.set(xlabel="scale", ylabel="validation score", title=f"{self.task}: task score")
        ax_k.set(
            xlabel="scale", ylabel="KL(unsteered || steered)", title="side effect on neutral prompts", yscale="symlog"
        )
        ax_s.legend(fontsize=7)
        return save_figure(fig, path)

    def save(self, path: str) -> str:
        """Write the result as JSON to `path`; returns `path`."""
        with open(path, "w") as fh:
            json.dump(dataclasses.asdict(self), fh, indent=1)
        return path


def method_vectors(
    model: Model,
    tokenizer: Any,
    task: Task,
    methods: Sequence[str],
    layers: Sequence[int],
    *,
    read: str | int = "mean",
    options: dict[str, dict] | None = None,
) -> dict[str, np.ndarray]:
    """`[L, d]` vectors per extraction method from the task's pairs, rescaled to the mean
    difference's length per layer. The supervised method trains one vector per layer in `layers`.

    Args:
        model: the model.
        tokenizer: its tokenizer.
        task: the task (its pairs).
        methods: names of `METHODS`.
        layers: the layers the supervised method trains.
        read: which tokens are read, as for `contrast_data`.
        options: per-method options, `{method: {option: value}}`.

    Returns:
        `{method: [L, d]}`.
    """
    options = options or {}
    pairs, chat = task.extraction_pairs()
    data = contrast_data(model, tokenizer, pairs=pairs, read=read, chat=chat)
    reference = extract("mean_difference", data)
    out = {}
    for m in tqdm(methods, desc="extracting", leave=False):
        opts = dict(options.get(m, {}))
        if m == "supervised":
            v = np.zeros_like(reference)
            for l in layers:
                v[l] = extract(m, data, model=model, layers=(l,), **opts)[l]
        else:
            v = extract(m, data, **opts)
        out[m] = v if m == "mean_difference" else match_norms(v, reference)
    return out


def _configs(
    vectors: dict[str, np.ndarray], layers: Sequence[int], scales: Sequence[float], trained: Sequence[str]
) -> tuple[list[dict], np.ndarray]:
    """One bank row per (method, layer, scale); trained vectors keep all their layers (layer -1)."""
    configs, bank = [], []
    for m, v in vectors.items():
        for l in [-1] if m in trained else layers:
            for s in scales:
                row = np.zeros_like(v)
                if l < 0:
                    row = v * s
                else:
                    row[l] = v[l] * s
                configs.append({"method": m, "layer": int(l), "scale": float(s)})
                bank.append(row)
    return configs, np.stack(bank).astype(np.float32)


def _map_configs(maps: dict[str, Any], n_layers: int, strengths: Sequence[float]) -> tuple[list[dict], dict, str]:
    """Bank rows for affine maps (`jaxsteer.Affine` or a `LinEASResult`) at each strength s:
    `scale = 1 + s * (scale - 1)`, `shift = s * shift` (dense `[L, d]`, identity off the map's layers)."""
    configs, scale_rows, shift_rows, sites = [], [], [], set()
    for name, m in maps.items():
        if hasattr(m, "interventions") and hasattr(m, "config"):  # a LinEASResult
            from ..train.trainable import affine_map

            dense = affine_map(m.trainable, m.config, n_layers)
            scale, shift, site = np.asarray(dense["scale"]), np.asarray(dense["shift"]), m.config.site
        elif isinstance(m, Affine) and m.index is None:
            scale, shift = (
                np.broadcast_to(np.asarray(a, np.float32), (n_layers, np.shape(a)[-1])) for a in (m.scale, m.shift)
            )
            if m.layers is not None:
                off = np.setdiff1d(np.arange(n_layers), m.layers)
                scale, shift = scale.copy(), shift.copy()
                scale[off], shift[off] = 1.0, 0.0
            site = m.site
        else:
            raise InputError(f"maps[{name!r}]: expected a jaxsteer.Affine or a LinEASResult, got {type(m).__name__}")
        sites.add(site)
        for s in strengths:
            configs.append({"method": name, "layer": -1, "scale": float(s)})
            scale_rows.append(1.0 + s * (scale - 1.0))
            shift_rows.append(s * shift)
    if len(sites) > 1:
        raise InputError(f"all maps of one sweep act at one site; got {sorted(sites)}")
    return (
        configs,
        {"scale": np.stack(scale_rows).astype(np.float32), "shift": np.stack(shift_rows).astype(np.float32)},
        sites.pop(),
    )


def _with_maps(bank: np.ndarray, map_bank: dict, n_vector_rows: int) -> dict:
    """One dict bank: vector rows with identity maps, then map rows with zero vectors."""
    K, shape = map_bank["scale"].shape[0], bank.shape[1:]
    return {
        "vectors": np.concatenate([bank, np.zeros((K, *shape), np.float32)]),
        "scale": np.concatenate([np.ones((n_vector_rows, *shape), np.float32), map_bank["scale"]]),
        "shift": np.concatenate([np.zeros((n_vector_rows, *shape), np.float32), map_bank["shift"]]),
    }


def sweep(
    model: Model,
    tokenizer: Any,
    task: Task,
    *,
    methods: Sequence[str] = ("mean_difference", "pca", "probe"),
    layers: Sequence[int] = (10,),
    scales: Sequence[float] = (1, 2, 4, 8),
    vectors: dict[str, Any] | None = None,
    trained_scales: Sequence[float] = (0.5, 1, 2),
    maps: dict[str, Any] | None = None,
    read: str | int = "mean",
    options: dict | None = None,
    max_new_tokens: int = 24,
    text_windows: int = 8,
    text_tokens: int = 64,
    rows: int = 96,
    say: Callable = print,
) -> SweepResult:
    """Sweep layer x scale per method (see the module doc) and pick each (method, layer)'s scale
    by validation score (ties: the smaller KL). `maps`: affine maps (LinEAS) swept over
    `trained_scales` as strengths."""
    if not (methods or vectors or maps):
        raise InputError("nothing to sweep: give extraction methods, trained vectors or maps")
    vecs = method_vectors(model, tokenizer, task, methods, layers, read=read, options=options)
    configs, banks = [], [np.zeros((1, model.config.n_layers, model.config.d_model), np.float32)]  # unsteered
    for group, group_scales, trained in ((vecs, scales, ()), (vectors or {}, trained_scales, tuple(vectors or ()))):
        if group:
            c, b = _configs({k: np.asarray(v, np.float32) for k, v in group.items()}, layers, group_scales, trained)
            configs, banks = configs + c, banks + [b]
    bank = np.concatenate(banks)
    map_site = "mlp_in"
    if maps:
        map_configs, map_bank, map_site = _map_configs(maps, model.config.n_layers, trained_scales)
        bank = _with_maps(bank, map_bank, len(configs) + 1)
        configs = configs + map_configs
    bank = jax.tree_util.tree_map(jnp.asarray, bank)
    say(f"{task.name}: {len(configs)} configurations x {len(task.validation)} validation prompts")
    val = task_scores(
        model,
        tokenizer,
        task,
        task.validation,
        bank,
        max_new_tokens=max_new_tokens,
        rows=rows,
        desc="validation",
        map_site=map_site,
    )
    pad = pad_id_for(model, tokenizer)
    neutral = _padded(task.encode(tokenizer, task.validation), pad)
    text = _padded(general_text_windows(tokenizer, text_windows, text_tokens), pad)
    kl, ppl = side_effects(model, bank, neutral, text, map_site=map_site)
    rows_out = [
        dict(c, val=float(val[i + 1]), kl=float(kl[i + 1]), ppl=float(ppl[i + 1])) for i, c in enumerate(configs)
    ]
    best_idx = []
    for key in dict.fromkeys((r["method"], r["layer"]) for r in rows_out):
        cand = [i for i, r in enumerate(rows_out) if (r["method"], r["layer"]) == key]
        best_idx.append(max(cand, key=lambda i: (rows_out[i]["val"], -rows_out[i]["kl"])))
    picked = jnp.asarray([0] + [i + 1 for i in best_idx])
    test = task_scores(
        model,
        tokenizer,
        task,
        task.test,
        jax.tree_util.tree_map(lambda b: b[picked], bank),
        max_new_tokens=max_new_tokens,
        rows=rows,
        desc="test",
        map_site=map_site,
    )
    best = [dict(rows_out[i], test=float(test[j + 1])) for j, i in enumerate(best_idx)]
    baseline = {"val": float(val[0]), "test": float(test[0]), "ppl": float(ppl[0])}
    return SweepResult(task.name, rows_out, best, baseline)


def general_text_windows(tokenizer: Any, n: int, length: int) -> list[list[int]]:
    """`n` windows of `length` tokens of general English (the Python docs, `train.sae.corpora`)."""
    from ..train.sae.corpora import general_text

    ids, out = [], []
    for doc in general_text():
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"]
        while len(ids) >= length and len(out) < n:
            out.append(ids[:length])
            ids = ids[length * 7 :]  # skip ahead: windows from different places
        if len(out) >= n:
            return out
    raise InputError(f"the general text sample holds fewer than {n} windows of {length} tokens")
