"""SAE metrics: explained variance / FVU, L0, dead latents, the LM's cross-entropy with the SAE
spliced in (and the fraction of loss recovered vs zero-ablation), HierarchicalTopK EV-vs-k.

Definitions (over all evaluated tokens, first `skip_first` positions of each window excluded):
- FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2; explained variance = 1 - FVU.
- L0 = mean number of non-zero latents per token; dead fraction = latents that never fired.
- CE: next-token cross-entropy (nats) of the model clean, with `Splice(sae)` at the SAE's
  layer, and with that activation zero-ablated; loss recovered = (CE_zero - CE_sae) /
  (CE_zero - CE_clean).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models.decoder import forward
from ..models.interventions import Ablate
from ..models.params import Model
from .arch import SAE, decode, encode, pre_acts
from .losses import htopk_errors, sparse_topk
from .splice import Splice


def _ce(logits: jax.Array, tokens: jax.Array, skip_first: int) -> jax.Array:
    logp = jax.nn.log_softmax(logits[:, skip_first:-1].astype(jnp.float32), axis=-1)
    tgt = tokens[:, skip_first + 1 :]
    return -jnp.sum(jnp.take_along_axis(logp, tgt[..., None], axis=-1))


def _batch_stats(model: Model, sae: SAE, residual: SAE | None, tokens: jax.Array, skip_first: int, with_ce: bool):
    c = sae.config
    clean, trace = forward(model, tokens, record=(c.site,), return_logits=with_ce)
    x = trace[c.site][c.layer][:, skip_first:].reshape(-1, c.d_in).astype(jnp.float32)
    z = encode(sae, x)
    x_hat = decode(sae, z).astype(jnp.float32)
    if residual is not None:
        x_hat = x_hat + decode(residual, encode(residual, x - x_hat)).astype(jnp.float32)
    out = {
        "n": jnp.asarray(x.shape[0], jnp.float32),
        "sum_x": jnp.sum(x, 0),
        "sum_x2": jnp.sum(x * x),
        "sq_err": jnp.sum((x - x_hat) ** 2),
        "l0": jnp.sum(z > 0),
        "fired": jnp.any(z > 0, axis=0),
    }
    if c.kind == "htopk":
        vals, idx = sparse_topk(pre_acts(sae, x), c.k)
        out["htopk_err"] = htopk_errors(sae, x, vals, idx)
    if with_ce:
        assert clean is not None  # forward returned logits: return_logits=with_ce
        spliced, _ = forward(model, tokens, interventions=[Splice(sae, residual=residual)], return_logits=True)
        zeroed, _ = forward(model, tokens, interventions=[Ablate(site=c.site, layers=(c.layer,))], return_logits=True)
        out.update(
            ce_clean=_ce(clean, tokens, skip_first),
            ce_sae=_ce(spliced, tokens, skip_first),
            ce_zero=_ce(zeroed, tokens, skip_first),
            n_ce=jnp.asarray(tokens.shape[0] * (tokens.shape[1] - skip_first - 1), jnp.float32),
        )
    return out


_batch_stats_jit = jax.jit(_batch_stats, static_argnums=(4, 5))


def evaluate_sae(
    model: Model,
    sae: SAE,
    windows: np.ndarray,
    *,
    batch: int = 8,
    residual: SAE | None = None,
    skip_first: int = 1,
    with_ce: bool = True,
) -> dict[str, Any]:
    """Metrics of `sae` (plus an optional residual SAE on top) over token windows `[N, T]`.

    Args:
        model: the model.
        sae: the SAE.
        windows: ids `[N, T]`.
        batch: windows per forward pass (a trailing partial batch is dropped).
        residual: a residual SAE evaluated on top (SAE Boost).
        skip_first: leading tokens of each window left out (the attention sink).
        with_ce: also measure the next-token loss with the SAE spliced in and with the site zeroed.

    Returns:
        `tokens`, `fvu`, `explained_variance`, `l0`, `dead_fraction`, `mse`; `ev_by_k` for
        HierarchicalTopK; with `with_ce`, `ce_clean`, `ce_sae`, `ce_zero` and `loss_recovered`.
    """
    acc: dict[str, Any] = {}
    for i in range(0, len(windows) - batch + 1, batch):
        stats = jax.device_get(
            _batch_stats_jit(model, sae, residual, jnp.asarray(windows[i : i + batch]), skip_first, with_ce)
        )
        for k, v in stats.items():
            acc[k] = (acc.get(k, False) | v) if k == "fired" else (acc.get(k, 0) + np.asarray(v, np.float64))
    if not acc:
        raise InputError(f"need at least {batch} evaluation windows, got {len(windows)}")
    n = acc["n"]
    total_var = acc["sum_x2"] - float(np.sum(acc["sum_x"] ** 2)) / n
    fvu = float(acc["sq_err"] / total_var)
    out = {
        "tokens": int(n),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "l0": float(acc["l0"] / n),
        "dead_fraction": float(1 - np.mean(acc["fired"])),
        "mse": float(acc["sq_err"] / n / sae.config.d_in),
    }
    if "htopk_err" in acc:
        out["ev_by_k"] = [float(1 - e / total_var) for e in acc["htopk_err"]]
    if with_ce:
        ce = {k: float(acc[k] / acc["n_ce"]) for k in ("ce_clean", "ce_sae", "ce_zero")}
        out.update(ce)
        denom = ce["ce_zero"] - ce["ce_clean"]
        out["loss_recovered"] = (ce["ce_zero"] - ce["ce_sae"]) / denom if abs(denom) > 1e-9 else float("nan")
    return out


def plot_ev_by_k(
    curves: dict[str, list[float]], path: str, points: dict[str, tuple[float, float]] | None = None, title: str = ""
) -> str:
    """Explained variance against k (one curve per name, e.g. HierarchicalTopK at every k <= K),
    plus single points (e.g. TopK SAEs trained at one k), drawn into a PNG.

    Args:
        curves: `{name: [ev at k = 1, 2, ...]}`.
        path: the PNG to write.
        points: `{name: (k, ev)}`.
        title: the figure title.

    Returns:
        `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker=".", label=name)
    for name, (k, ev) in (points or {}).items():
        ax.scatter([k], [ev], marker="x", s=60, label=name, zorder=3)
    ax.set_xlabel("k (active latents)")
    ax.set_ylabel("explained variance")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.savefig(path, dpi=110)
    return path


__all__ = ["evaluate_sae", "plot_ev_by_k"]
