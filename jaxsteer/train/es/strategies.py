"""Evolution-strategy optimisers over a search space (see `es_spaces`), with state as a pytree.

A strategy is a small pytree of hyperparameters (`flax.struct`: sizes and choices are static,
`sigma` and `lr` are leaves, so changing them does not recompile):

    state = strategy.init(theta0, key)                       # {"theta", "opt", "key", "generation"}
    member = strategy.member(space, state, m)                # member m's parameters (regenerated from keys)
    state, metrics = strategy.update(space, state, rewards)  # rewards [M] or [M, prompts]

- `OpenES`: OpenAI-ES / Qiu et al. / EGGROLL update. Antithetic pairs (members 2i, 2i+1 use
  +eps_i, -eps_i), fitness shaping (centered ranks or z-scores), the gradient estimate
  `g = sum_m f_m eps_m / (M sigma)` rebuilt from the noise keys by the space (`noise_sum`: nothing
  population-sized is kept) and handed to an optax optimizer (as `-g`: optax minimises).
- `CMAES`: full-covariance CMA-ES (Hansen's tutorial, positive recombination weights), for
  small dense spaces (ESSA singular values, a few steering vectors): C is `[D, D]`.
- `SepCMAES`: diagonal CMA-ES (Ros & Hansen 2008) for large dense spaces; samples and the
  update's weighted noise moments are regenerated from keys in a scan (memory O(D)).

All members of a generation share `noise_key(state)`; member m's noise comes from
`fold_in(noise_key, m)` (or the pair index for antithetic OpenES).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

from ...errors import InputError
from ..config import ES_STRATEGIES

SHAPINGS = ("centered_rank", "zscore", "zscore_per_prompt", "none")

# --------------------------------------------------------------------------- fitness shaping


def centered_ranks(f: jax.Array) -> jax.Array:
    """Ranks scaled to [-0.5, 0.5] (lowest -0.5, highest +0.5); tied values share their mean rank."""
    f = jnp.asarray(f, jnp.float32)
    n = f.shape[0]
    less = jnp.sum(f[None, :] < f[:, None], axis=1)
    equal = jnp.sum(f[None, :] == f[:, None], axis=1)
    rank = less + (equal - 1) / 2.0
    return rank / max(n - 1, 1) - 0.5


def zscore(f: jax.Array, axis: int = 0, eps: float = 1e-8) -> jax.Array:
    """`(f - mean) / (std + eps)` along `axis` (population std, ddof=0); all-equal gives zeros."""
    f = jnp.asarray(f, jnp.float32)
    mu = jnp.mean(f, axis=axis, keepdims=True)
    sd = jnp.std(f, axis=axis, keepdims=True)
    return (f - mu) / (sd + eps)


def fitness(rewards: jax.Array) -> jax.Array:
    """Fitness `[M]`: the mean reward over prompts (rewards `[M]` or `[M, B]`)."""
    r = jnp.asarray(rewards, jnp.float32)
    return r if r.ndim == 1 else jnp.mean(r, axis=1)


def shape_fitness(rewards: jax.Array, mode: str) -> jax.Array:
    """Shaped fitness `[M]` from rewards `[M]` or `[M, B]`.

    Args:
        rewards: the members' rewards (per prompt with `[M, B]`).
        mode: "centered_rank": centered ranks of the mean reward; "zscore": z-score of the mean
            reward; "zscore_per_prompt": z-score each prompt's rewards over the population, then
            average over prompts (EGGROLL's per-group normalisation); "none": the mean reward minus its mean.

    Returns:
        The fitness `[M]`.
    """
    r = jnp.asarray(rewards, jnp.float32)
    if mode == "centered_rank":
        return centered_ranks(fitness(r))
    if mode == "zscore":
        return zscore(fitness(r))
    if mode == "zscore_per_prompt":
        return jnp.mean(zscore(r if r.ndim == 2 else r[:, None], axis=0), axis=1)
    if mode == "none":
        f = fitness(r)
        return f - jnp.mean(f)
    raise InputError(f"unknown fitness shaping {mode!r}; choose from {SHAPINGS}")


def fitness_stats(rewards: jax.Array) -> dict[str, jax.Array]:
    f = fitness(rewards)
    return {
        "fitness_mean": jnp.mean(f),
        "fitness_max": jnp.max(f),
        "fitness_min": jnp.min(f),
        "fitness_std": jnp.std(f),
        "best_member": jnp.argmax(f).astype(jnp.int32),
    }


# --------------------------------------------------------------------------- common


def generation_key(state: dict) -> jax.Array:
    """This generation's key: `fold_in(state["key"], generation)` (the stored key never changes)."""
    return jax.random.fold_in(state["key"], state["generation"])


def noise_key(state: dict) -> jax.Array:
    return jax.random.fold_in(generation_key(state), 0)


def sampling_key(state: dict) -> jax.Array:
    """Key for sampled decoding, shared by all members (common random numbers)."""
    return jax.random.fold_in(generation_key(state), 1)


def _base_state(theta, opt, key) -> dict:
    theta = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), theta)  # no copy when already float32
    return {"theta": theta, "opt": opt, "key": jnp.asarray(key), "generation": jnp.zeros((), jnp.int32)}


def _finish(state: dict, theta, opt, metrics: dict) -> tuple[dict, dict]:
    diff = jax.tree_util.tree_map(lambda a, b: a - b, theta, state["theta"])
    metrics["update_norm"] = optax.global_norm(diff)
    new = dict(state, theta=theta, opt=opt, generation=state["generation"] + 1)
    return new, metrics


# --------------------------------------------------------------------------- OpenAI-ES


def _concrete(x) -> bool:
    return isinstance(x, (int, float, np.number))


@struct.dataclass
class OpenES:
    """OpenAI-ES with an optax optimizer.

    Attributes:
        population: M (even when `antithetic`).
        sigma: the noise scale.
        lr: the optimizer's learning rate.
        antithetic: mirrored noise pairs (+eps, -eps).
        shaping: the fitness shaping (`shape_fitness`).
        divide_by_sigma: `g = sum f eps / (M sigma)` (the score-function gradient); False gives Qiu et
            al.'s and EGGROLL's `theta += alpha * mean(f eps)` with sgd(lr=alpha).
        optimizer: "sgd" | "adam" | "adamw".
        momentum: sgd's momentum.
        b1: adam's first-moment decay.
        b2: adam's second-moment decay.
        weight_decay: adamw's weight decay.
    """

    population: int = struct.field(pytree_node=False, default=32)
    sigma: float = 0.02
    lr: float = 0.01
    antithetic: bool = struct.field(pytree_node=False, default=True)
    shaping: str = struct.field(pytree_node=False, default="centered_rank")
    divide_by_sigma: bool = struct.field(pytree_node=False, default=True)
    optimizer: str = struct.field(pytree_node=False, default="sgd")
    momentum: float = struct.field(pytree_node=False, default=0.0)
    b1: float = struct.field(pytree_node=False, default=0.9)
    b2: float = struct.field(pytree_node=False, default=0.999)
    weight_decay: float = struct.field(pytree_node=False, default=0.0)

    def __post_init__(self):
        if self.population < 2 or (self.antithetic and self.population % 2):
            raise InputError(f"population must be >= 2 (and even with antithetic sampling), got {self.population}")
        if self.shaping not in SHAPINGS:
            raise InputError(f"unknown fitness shaping {self.shaping!r}; choose from {SHAPINGS}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise InputError(f"optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        for name in ("sigma", "lr"):
            v = getattr(self, name)
            if _concrete(v) and v <= 0:
                raise InputError(f"{name} must be > 0, got {v}")

    def tx(self) -> optax.GradientTransformation:
        if self.optimizer == "sgd":
            return optax.sgd(self.lr, momentum=self.momentum or None)
        if self.optimizer == "adam":
            return optax.adam(self.lr, b1=self.b1, b2=self.b2)
        return optax.adamw(self.lr, b1=self.b1, b2=self.b2, weight_decay=self.weight_decay)

    def init(self, theta, key) -> dict:
        theta = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), theta)
        return _base_state(theta, self.tx().init(theta), key)

    def _noise_index(self, m):
        if self.antithetic:
            return m // 2, 1.0 - 2.0 * (m % 2).astype(jnp.float32)
        return m, jnp.float32(1.0)

    def member(self, space, state: dict, m) -> Any:
        """Member m's parameters: `space.perturb(theta, fold_in(noise_key, i), +-sigma)`."""
        m = jnp.asarray(m, jnp.int32)
        i, sign = self._noise_index(m)
        return space.perturb(state["theta"], jax.random.fold_in(noise_key(state), i), self.sigma * sign)

    def gradient(self, space, state: dict, rewards) -> Any:
        """The ES gradient estimate (ascent direction) from rewards `[M]` / `[M, B]`."""
        f = shape_fitness(rewards, self.shaping)
        if f.shape[0] != self.population:
            raise InputError(f"got {f.shape[0]} fitness values for a population of {self.population}")
        nk = noise_key(state)
        if self.antithetic:
            weights = f[0::2] - f[1::2]
        else:
            weights = f
        keys = jax.vmap(lambda i: jax.random.fold_in(nk, i))(jnp.arange(weights.shape[0]))
        scale = 1.0 / (self.population * (self.sigma if self.divide_by_sigma else 1.0))
        g = space.noise_sum(state["theta"], keys, weights)
        return jax.tree_util.tree_map(lambda x: x * scale, g)

    def update(self, space, state: dict, rewards) -> tuple[dict, dict]:
        g = self.gradient(space, state, rewards)
        tx = self.tx()
        neg = jax.tree_util.tree_map(jnp.negative, g)
        updates, opt = tx.update(neg, state["opt"], state["theta"])
        theta = optax.apply_updates(state["theta"], updates)
        metrics = {**fitness_stats(rewards), "grad_norm": optax.global_norm(g), "sigma": jnp.float32(self.sigma)}
        return _finish(state, theta, opt, metrics)


# --------------------------------------------------------------------------- CMA-ES


def _cma_constants(D: int, lam: int, sep: bool) -> dict[str, Any]:
    mu = lam // 2
    w = math.log((lam + 1) / 2) - np.log(np.arange(1, mu + 1, dtype=np.float64))
    w = w / np.sum(w)
    mu_eff = float(1.0 / np.sum(w**2))
    c_s = (mu_eff + 2) / (D + mu_eff + 5)
    d_s = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (D + 1)) - 1) + c_s
    c_c = (4 + mu_eff / D) / (D + 4 + 2 * mu_eff / D)
    c_1 = 2 / ((D + 1.3) ** 2 + mu_eff)
    c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((D + 2) ** 2 + mu_eff))
    if sep:  # Ros & Hansen: diagonal learning rates scaled by (D + 2) / 3
        f = (D + 2) / 3
        c_1, c_mu = c_1 * f, c_mu * f
        if c_1 + c_mu > 1:
            c_1, c_mu = c_1 / (c_1 + c_mu), c_mu / (c_1 + c_mu)
    chi_n = math.sqrt(D) * (1 - 1 / (4 * D) + 1 / (21 * D * D))
    return dict(
        mu=mu, w=jnp.asarray(w, jnp.float32), mu_eff=mu_eff, c_s=c_s, d_s=d_s, c_c=c_c, c_1=c_1, c_mu=c_mu, chi_n=chi_n
    )


def _elite_weights(f: jax.Array, w: jax.Array) -> jax.Array:
    """Recombination weight per member `[M]`: w_i for the i-th best (highest fitness), 0 otherwise."""
    order = jnp.argsort(-f, stable=True)
    return jnp.zeros_like(f).at[order[: w.shape[0]]].set(w)


class _CMABase:
    population: int  # fields of each subclass's dataclass
    sigma: float

    def __post_init__(self):
        if self.population < 4:
            raise InputError(f"CMA-ES needs a population of at least 4, got {self.population}")
        if _concrete(self.sigma) and self.sigma <= 0:
            raise InputError(f"sigma must be > 0, got {self.sigma}")

    def _z(self, state, m, D):
        return jax.random.normal(jax.random.fold_in(noise_key(state), m), (D,), jnp.float32)

    def _opt(self, dim: int, **covariance) -> dict:
        """Optimizer state: step size, the covariance parts, and the two evolution paths."""
        zeros = jnp.zeros((dim,), jnp.float32)
        return {"sigma": jnp.float32(self.sigma), **covariance, "p_sigma": zeros, "p_c": zeros}

    def _flat(self, space, state):
        _check_dense(space, type(self).__name__)
        return ravel_pytree(state["theta"])


def _dim(theta) -> int:
    """Number of scalars in `theta` (the search dimension D)."""
    return int(sum(np.prod(jnp.shape(x)) for x in jax.tree_util.tree_leaves(theta)))


def _check_dense(space, who: str) -> None:
    if not getattr(space, "dense", False):
        raise TypeError(f"{who} needs a dense search space (theta-shaped members); {type(space).__name__} is not one")


@struct.dataclass
class CMAES(_CMABase):
    """Full-covariance CMA-ES over the flattened theta (D dims; C is `[D, D]`: keep D small).

    Attributes:
        population: members per generation (>= 4).
        sigma: the initial step size (then adapted, kept in the state).
        max_dim: the largest D accepted (use `SepCMAES` beyond).
    """

    population: int = struct.field(pytree_node=False, default=16)
    sigma: float = 0.1
    max_dim: int = struct.field(pytree_node=False, default=8192)  # C is [D, D]: refuse larger D

    def init(self, theta, key) -> dict:
        D = _dim(theta)
        if D > self.max_dim:
            raise InputError(f"CMAES: {D} dimensions need a [{D}, {D}] covariance; use SepCMAES (or raise max_dim)")
        eye = jnp.eye(D, dtype=jnp.float32)
        return _base_state(theta, self._opt(D, C=eye, B=eye, D=jnp.ones((D,), jnp.float32)), key)

    def member(self, space, state: dict, m) -> Any:
        flat, unravel = self._flat(space, state)
        o = state["opt"]
        y = o["B"] @ (o["D"] * self._z(state, m, flat.shape[0]))
        return unravel(flat + o["sigma"] * y)

    def update(self, space, state: dict, rewards) -> tuple[dict, dict]:
        flat, unravel = self._flat(space, state)
        D = flat.shape[0]
        k = _cma_constants(D, self.population, sep=False)
        o = state["opt"]
        f = fitness(rewards)
        Z = jax.vmap(lambda m: self._z(state, m, D))(jnp.arange(self.population))  # [M, D] (D is small)
        Y = (Z * o["D"]) @ o["B"].T
        wm = _elite_weights(f, k["w"])
        y_w, z_w = wm @ Y, wm @ Z
        sigma = o["sigma"]
        mean = flat + sigma * y_w
        g = state["generation"].astype(jnp.float32) + 1
        p_s = (1 - k["c_s"]) * o["p_sigma"] + math.sqrt(k["c_s"] * (2 - k["c_s"]) * k["mu_eff"]) * (o["B"] @ z_w)
        ps_norm = jnp.linalg.norm(p_s)
        h = (ps_norm / jnp.sqrt(1 - (1 - k["c_s"]) ** (2 * g)) < (1.4 + 2 / (D + 1)) * k["chi_n"]).astype(jnp.float32)
        p_c = (1 - k["c_c"]) * o["p_c"] + h * math.sqrt(k["c_c"] * (2 - k["c_c"]) * k["mu_eff"]) * y_w
        delta_h = (1 - h) * k["c_c"] * (2 - k["c_c"])
        rank_mu = (Y * wm[:, None]).T @ Y
        C = (
            (1 - k["c_1"] - k["c_mu"] + k["c_1"] * delta_h) * o["C"]
            + k["c_1"] * jnp.outer(p_c, p_c)
            + k["c_mu"] * rank_mu
        )
        C = (C + C.T) / 2
        evals, B = jnp.linalg.eigh(C)
        Dv = jnp.sqrt(jnp.maximum(evals, 1e-20))
        sigma = sigma * jnp.exp((k["c_s"] / k["d_s"]) * (ps_norm / k["chi_n"] - 1))
        opt = {"sigma": sigma, "C": C, "B": B, "D": Dv, "p_sigma": p_s, "p_c": p_c}
        metrics = {**fitness_stats(rewards), "sigma": sigma, "cond": jnp.max(Dv) / jnp.min(Dv)}
        return _finish(state, unravel(mean), opt, metrics)


@struct.dataclass
class SepCMAES(_CMABase):
    """Diagonal (separable) CMA-ES; memory O(D): noise regenerated from keys in the update.

    Attributes:
        population: members per generation (>= 4).
        sigma: the initial step size (then adapted, kept in the state).
    """

    population: int = struct.field(pytree_node=False, default=16)
    sigma: float = 0.1

    def init(self, theta, key) -> dict:
        D = _dim(theta)
        return _base_state(theta, self._opt(D, diag=jnp.ones((D,), jnp.float32)), key)

    def member(self, space, state: dict, m) -> Any:
        flat, unravel = self._flat(space, state)
        o = state["opt"]
        return unravel(flat + o["sigma"] * jnp.sqrt(o["diag"]) * self._z(state, m, flat.shape[0]))

    def update(self, space, state: dict, rewards) -> tuple[dict, dict]:
        flat, unravel = self._flat(space, state)
        D = flat.shape[0]
        k = _cma_constants(D, self.population, sep=True)
        o = state["opt"]
        wm = _elite_weights(fitness(rewards), k["w"])

        def body(acc, mw):
            m, w = mw
            z = self._z(state, m, D)
            return (acc[0] + w * z, acc[1] + w * z * z), None

        zero = jnp.zeros((D,), jnp.float32)
        (z_w, z2_w), _ = jax.lax.scan(body, (zero, zero), (jnp.arange(self.population), wm))
        sd = jnp.sqrt(o["diag"])
        y_w = sd * z_w
        sigma = o["sigma"]
        mean = flat + sigma * y_w
        g = state["generation"].astype(jnp.float32) + 1
        p_s = (1 - k["c_s"]) * o["p_sigma"] + math.sqrt(k["c_s"] * (2 - k["c_s"]) * k["mu_eff"]) * z_w
        ps_norm = jnp.linalg.norm(p_s)
        h = (ps_norm / jnp.sqrt(1 - (1 - k["c_s"]) ** (2 * g)) < (1.4 + 2 / (D + 1)) * k["chi_n"]).astype(jnp.float32)
        p_c = (1 - k["c_c"]) * o["p_c"] + h * math.sqrt(k["c_c"] * (2 - k["c_c"]) * k["mu_eff"]) * y_w
        delta_h = (1 - h) * k["c_c"] * (2 - k["c_c"])
        diag = (
            (1 - k["c_1"] - k["c_mu"] + k["c_1"] * delta_h) * o["diag"]
            + k["c_1"] * p_c**2
            + k["c_mu"] * o["diag"] * z2_w
        )
        sigma = sigma * jnp.exp((k["c_s"] / k["d_s"]) * (ps_norm / k["chi_n"] - 1))
        opt = {"sigma": sigma, "diag": diag, "p_sigma": p_s, "p_c": p_c}
        metrics = {**fitness_stats(rewards), "sigma": sigma, "cond": jnp.sqrt(jnp.max(diag) / jnp.min(diag))}
        return _finish(state, unravel(mean), opt, metrics)


STRATEGIES: dict[str, type[OpenES] | type[CMAES] | type[SepCMAES]] = dict(
    zip(ES_STRATEGIES, (OpenES, CMAES, SepCMAES), strict=True)
)  # the names `es.strategy` takes

__all__ = [
    "SHAPINGS",
    "centered_ranks",
    "zscore",
    "fitness",
    "shape_fitness",
    "fitness_stats",
    "generation_key",
    "noise_key",
    "sampling_key",
    "OpenES",
    "CMAES",
    "SepCMAES",
    "STRATEGIES",
]
