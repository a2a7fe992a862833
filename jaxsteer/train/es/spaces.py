"""ES search spaces over a frozen base model.

A space is a pytree (frozen arrays such as ESSA's U and V are leaves; settings are static) with

    theta = space.init(model)                           # the evolving parameters (float32 pytree)
    member = space.perturb(theta, key, sigma)           # one population member (noise from `key`)
    model2, interventions = space.apply(model, member)  # what to run (forward / generate)
    g = space.noise_sum(theta, keys, weights)           # sum_k w_k eps(keys[k]), theta-shaped

`perturb(theta, key, -sigma)` is the antithetic partner of `perturb(theta, key, sigma)`, and
`perturb(theta, key, 0.0)` is the centre. Nothing population-sized is stored: noise is regenerated
from keys, in the evaluation (one member at a time under `vmap`) and in `noise_sum` (a scan).

- `TrainableSpace` / `SteeringSpace`: a trainable of `jaxsteer.train.trainable` (steering vectors
  `[L, d]`, the natural tiny space; or LoRA factors, or the full weights).
- `FullSpace`: the model's own parameters, Gaussian noise per tensor (Qiu et al.).
- `EggrollSpace`: the projection matrices with low-rank noise `E = A B^T / sqrt(r)` per matrix
  (EGGROLL), run through the decoder's adapter path, never materialised.
- `ESSASpace`: ESSA as its paper defines it: each factor of a trained LoRA decomposed separately,
  `a = U_a diag(s_a) V_a^T`, `b = U_b diag(s_b) V_b^T` (2r values per adapted matrix), U and V
  frozen, offsets on the top `floor(alpha * r)` singular values of each factor evolving.
- `ESSAProductSpace`: the product `scale * a @ b = U diag(s) V^T` (r values per matrix), also the
  random-subspace ES (random orthonormal U, V with s = 0).

Dense spaces (`dense = True`: members are theta-shaped) also work with the CMA strategies.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ...errors import InputError
from ...models.decoder import ATTENTION_PROJECTIONS, PROJECTIONS
from ...models.params import Model, flatten, unflatten
from ..trainable import TrainableConfig, apply_trainable, init_trainable

_f32 = jnp.float32


def _tree_f32(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, _f32), tree)


def _normal_pieces(key: jax.Array, shapes: list[tuple[int, ...]]) -> list[jax.Array]:
    """Standard normal float32 arrays of `shapes`: one draw cut in order (a single PRNG kernel
    compiles far faster than one per shape)."""
    sizes = [math.prod(s) for s in shapes]
    flat = jax.random.normal(key, (sum(sizes),), _f32)
    out, start = [], 0
    for shape, n in zip(shapes, sizes, strict=True):
        out.append(flat[start : start + n].reshape(shape))
        start += n
    return out


def normal_like(tree, key: jax.Array):
    """Standard normal noise shaped like `tree` (float32): one draw from `key`, cut in leaf order."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, _normal_pieces(key, [tuple(jnp.shape(x)) for x in leaves]))


def _block_diagonal(x: jax.Array, y: jax.Array) -> jax.Array:
    """`[..., m, n]`, `[..., p, q]` -> `[..., m + p, n + q]` with x and y on the diagonal."""
    top = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + y.shape[-1:], x.dtype)], axis=-1)
    bottom = jnp.concatenate([jnp.zeros(y.shape[:-1] + x.shape[-1:], x.dtype), y.astype(x.dtype)], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def _factorwise(ad: dict) -> dict:
    """An adapter in the decoder's full factor-wise form (missing `s` / `s_out`: ones; `core`: identity)."""
    r = ad["a"].shape[-1]
    lead = ad["a"].shape[:-2]
    ones = jnp.ones(lead + (r,), ad["a"].dtype)
    return {
        "a": ad["a"],
        "s": ad.get("s", ones),
        "core": ad.get("core", jnp.broadcast_to(jnp.eye(r, dtype=ad["a"].dtype), lead + (r, r))),
        "s_out": ad.get("s_out", ones),
        "b": ad["b"],
    }


def _with_adapter(layers: dict, proj: str, new: dict) -> None:
    """Set `layers["lora"][proj]` to `new` (`{"a", "b"}`, optionally `"s"`, or `"core"` + `"s_out"`),
    concatenating along the rank axis with an adapter already there (a missing `"s"` counts as ones,
    a missing `"core"` as the identity; cores are joined block-diagonally)."""
    lora = dict(layers.get("lora", {}))
    old = lora.get(proj)
    if old is not None and ("core" in old or "core" in new):
        old, new = _factorwise(old), _factorwise(new)
        new = {
            "a": jnp.concatenate([old["a"], new["a"].astype(old["a"].dtype)], axis=-1),
            "s": jnp.concatenate([old["s"], new["s"].astype(old["a"].dtype)], axis=-1),
            "core": _block_diagonal(old["core"], new["core"]),
            "s_out": jnp.concatenate([old["s_out"], new["s_out"].astype(old["a"].dtype)], axis=-1),
            "b": jnp.concatenate([old["b"], new["b"].astype(old["b"].dtype)], axis=-2),
        }
    elif old is not None:
        merged = {
            "a": jnp.concatenate([old["a"], new["a"].astype(old["a"].dtype)], axis=-1),
            "b": jnp.concatenate([old["b"], new["b"].astype(old["b"].dtype)], axis=-2),
        }
        if "s" in old or "s" in new:
            ones = lambda ab: jnp.ones(ab["a"].shape[:-2] + ab["a"].shape[-1:], ab["a"].dtype)
            merged["s"] = jnp.concatenate(
                [old.get("s", ones(old)), new.get("s", ones(new)).astype(old["a"].dtype)], axis=-1
            )
        new = merged
    lora[proj] = new
    layers["lora"] = lora


class _Dense:
    """Shared code of the spaces whose members are `theta + sigma * eps` (eps ~ N(0, I) per leaf)."""

    dense = True

    def noise(self, theta, key):
        return normal_like(theta, key)

    def perturb(self, theta, key, sigma):
        eps = self.noise(theta, key)
        return jax.tree_util.tree_map(lambda t, e: t + sigma * e, theta, eps)

    def noise_sum(self, theta, keys, weights):
        """`sum_k weights[k] * eps(keys[k])`, regenerating one eps at a time (lax.scan)."""

        def body(acc, kw):
            eps = self.noise(theta, kw[0])
            return jax.tree_util.tree_map(lambda a, e: a + kw[1] * e, acc, eps), None

        acc = jax.tree_util.tree_map(lambda t: jnp.zeros(jnp.shape(t), _f32), theta)
        return jax.lax.scan(body, acc, (keys, jnp.asarray(weights, _f32)))[0]


# --------------------------------------------------------------------------- steering


@struct.dataclass
class TrainableSpace(_Dense):
    """Any trainable of `jaxsteer.train.trainable`, combined with the base by `apply_trainable`.

    Theta is that trainable pytree (float32), e.g. `{"vectors": [n, d]}` (zeros at init) for steering.

    Attributes:
        cfg: the trainable (`cfg.kind` steering, lora or full).
    """

    cfg: TrainableConfig = struct.field(pytree_node=False, default=TrainableConfig())

    def init(self, model: Model, key: jax.Array | None = None):
        return _tree_f32(init_trainable(model, self.cfg, jax.random.PRNGKey(0) if key is None else key))

    def apply(self, model: Model, member) -> tuple[Model, tuple]:
        return apply_trainable(model, member, self.cfg)


def SteeringSpace(
    layers: tuple[int, ...] | None = None, site: str = "resid_post", rank: int | None = None
) -> TrainableSpace:
    """Steering vectors `[L, d]` (or the selected `layers`, at `site`; low-rank with `rank`)."""
    return TrainableSpace(TrainableConfig(kind="steering", layers=layers, site=site, rank=rank))


# --------------------------------------------------------------------------- full parameters


@struct.dataclass
class FullSpace(_Dense):
    """The model's own parameters (Qiu et al.), in float32; members are cast back to each parameter's dtype.

    Attributes:
        paths: the nested params subset that is theta ('/'-joined, e.g. "layers/q_proj"; None = every
            parameter except adapters).
    """

    paths: tuple[str, ...] | None = struct.field(pytree_node=False, default=None)

    def _paths(self, model: Model) -> list[str]:
        flat = flatten(model.params)
        if self.paths is None:
            return sorted(p for p in flat if not p.startswith("layers/lora/"))
        missing = [p for p in self.paths if p not in flat]
        if missing:
            raise InputError(f"FullSpace: no parameter {missing[0]!r}; parameters: {sorted(flat)}")
        return list(self.paths)

    def init(self, model: Model, key: jax.Array | None = None):
        flat = flatten(model.params)
        return unflatten({p: jnp.asarray(flat[p], _f32) for p in self._paths(model)})

    def apply(self, model: Model, member) -> tuple[Model, tuple]:
        flat = flatten(model.params)
        for p, v in flatten(member).items():
            flat[p] = v.astype(flat[p].dtype)
        return dataclasses.replace(model, params=unflatten(flat)), ()


# --------------------------------------------------------------------------- EGGROLL


@struct.dataclass
class EggrollSpace:
    """EGGROLL: theta = the target projection matrices `{proj: [L, in, out]}` (float32).

    Member noise per matrix is `E = A B^T / sqrt(r)` with A `[in, r]`, B `[out, r]` standard normal,
    run as the adapter `{"a": A, "b": sigma B^T / sqrt(r)}`, so the forward computes
    `x W + (x A)(sigma B^T / sqrt(r))` (the paper's `x W^T + (x B) A^T sigma / sqrt(r)` with our
    `[in, out]` layout). Updates (sums of low-rank terms) are full rank.

    Attributes:
        targets: the projections searched.
        rank: the noise rank r.
        chunk: members per step of `noise_sum`'s scan.
    """

    targets: tuple[str, ...] = struct.field(pytree_node=False, default=PROJECTIONS)
    rank: int = struct.field(pytree_node=False, default=1)
    chunk: int = struct.field(pytree_node=False, default=16)

    dense = False

    def __post_init__(self):
        bad = [t for t in self.targets if t not in PROJECTIONS]
        if bad or not self.targets:
            raise InputError(f"EggrollSpace targets {self.targets} must be a non-empty subset of {PROJECTIONS}")
        if self.rank < 1:
            raise InputError("rank must be >= 1")

    def init(self, model: Model, key: jax.Array | None = None):
        layers = model.params["layers"]
        return {p: jnp.asarray(layers[p], _f32) for p in self.targets}

    def factors(self, theta, key):
        """`{proj: (A [L, in, r], B [L, out, r])}`, standard normal: one draw from `key`, cut in
        (sorted projection, A, B) order."""
        names = sorted(theta)
        shapes = []
        for p in names:
            L, d_in, d_out = theta[p].shape
            shapes += [(L, d_in, self.rank), (L, d_out, self.rank)]
        pieces = _normal_pieces(key, shapes)
        return {p: (pieces[2 * j], pieces[2 * j + 1]) for j, p in enumerate(names)}

    def perturb(self, theta, key, sigma):
        scale = sigma / math.sqrt(self.rank)
        lora = {p: {"a": A, "b": scale * jnp.swapaxes(B, -1, -2)} for p, (A, B) in self.factors(theta, key).items()}
        return {"w": theta, "lora": lora}

    def apply(self, model: Model, member) -> tuple[Model, tuple]:
        layers = dict(model.params["layers"])
        for p, w in member["w"].items():
            layers[p] = w.astype(layers[p].dtype)
            _with_adapter(layers, p, member["lora"][p])
        return dataclasses.replace(model, params={**model.params, "layers": layers}), ()

    def noise(self, theta, key):
        """The materialised `E = A B^T / sqrt(r)` per matrix (tests and tiny models only)."""
        return {
            p: jnp.einsum("lir,lor->lio", A, B) / math.sqrt(self.rank) for p, (A, B) in self.factors(theta, key).items()
        }

    def noise_sum(self, theta, keys, weights):
        """`sum_k w_k A_k B_k^T / sqrt(r)` per matrix: regenerated factors, `chunk` members per scan
        step contracted as `A^T diag(w) B` (never an `[M, in, out]` tensor)."""
        weights = jnp.asarray(weights, _f32)
        K = weights.shape[0]
        c = max(1, min(self.chunk, K))
        pad = (-K) % c
        keys = jnp.concatenate([keys, jnp.repeat(keys[:1], pad, axis=0)]) if pad else keys
        weights = jnp.concatenate([weights, jnp.zeros((pad,), _f32)]) if pad else weights
        keys = keys.reshape(-1, c, *keys.shape[1:])
        weights = weights.reshape(-1, c)

        def body(acc, kw):
            ks, ws = kw
            facs = jax.vmap(lambda k: self.factors(theta, k))(ks)
            return {p: acc[p] + jnp.einsum("clir,c,clor->lio", A, ws, B) for p, (A, B) in facs.items()}, None

        acc = {p: jnp.zeros(theta[p].shape, _f32) for p in theta}
        acc = jax.lax.scan(body, acc, (keys, weights))[0]
        return {p: v / math.sqrt(self.rank) for p, v in acc.items()}


# --------------------------------------------------------------------------- ESSA


def n_evolving(alpha: float, n: int) -> int:
    """ESSA's top-alpha count of `n` singular values: `floor(alpha * n)` (the paper rounds down);
    an error when that leaves none (the paper's rank 8, alpha 0.1 cell)."""
    if not 0 < alpha <= 1:
        raise InputError(f"es.alpha must be in (0, 1], got {alpha}")
    k = int(math.floor(alpha * n + 1e-9))
    if k < 1:
        raise InputError(
            f"es.alpha={alpha} of {n} singular values rounds down to 0 evolving values; use alpha >= {1 / n:g}"
        )
    return k


def _pad_offsets(offsets: jax.Array, s: jax.Array) -> jax.Array:
    """`s + [offsets, 0...]`: offsets on the leading (largest) singular values, the rest fixed."""
    return s + jnp.pad(offsets.astype(_f32), [(0, 0)] * (s.ndim - 1) + [(0, s.shape[-1] - offsets.shape[-1])])


@struct.dataclass
class ESSASpace(_Dense):
    """ESSA as its paper defines it (arXiv 2507.04453, section 3.2 and Algorithm 1).

    Each factor of a trained LoRA adapter is decomposed separately, `a = U_a diag(s_a) V_a^T`,
    `b = U_b diag(s_b) V_b^T` (our `[in, r]` / `[r, out]` layout: the paper's A and B transposed, same
    singular values), so an adapted matrix carries 2r singular values. U, V are frozen leaves; theta
    holds offsets `{proj: {"a": [L, k_a], "b": [L, k_b]}}` added to the top `floor(alpha * r)` values
    of each factor (zeros at init: the centre is the warm-start LoRA exactly). Build with `essa_space`.

    Attributes:
        u_a: `{proj: [L, in, r]}`.
        s_a: `{proj: [L, r]}`, descending.
        vt_a: `{proj: [L, r, r]}`.
        u_b: `{proj: [L, r, r]}`.
        s_b: `{proj: [L, r]}`, descending.
        vt_b: `{proj: [L, r, out]}`.
        frozen: `{proj: {"a", "b"}}`: the warm start's adapters outside `targets`, applied unchanged
            (LoRA scale folded into b).
        n_a: evolving singular values of each `a` factor.
        n_b: evolving singular values of each `b` factor.
        scale: the LoRA's alpha / rank.
    """

    u_a: dict
    s_a: dict
    vt_a: dict
    u_b: dict
    s_b: dict
    vt_b: dict
    frozen: dict
    n_a: int = struct.field(pytree_node=False, default=1)
    n_b: int = struct.field(pytree_node=False, default=1)
    scale: float = struct.field(pytree_node=False, default=1.0)

    def init(self, model: Model | None = None, key: jax.Array | None = None):
        return {
            p: {
                "a": jnp.zeros(s.shape[:-1] + (self.n_a,), _f32),
                "b": jnp.zeros(self.s_b[p].shape[:-1] + (self.n_b,), _f32),
            }
            for p, s in self.s_a.items()
        }

    def singular_values(self, theta) -> dict:
        """`{proj: (s_a [L, r], s_b [L, r])}`: each factor's values plus the member's offsets."""
        return {
            p: (_pad_offsets(theta[p]["a"], self.s_a[p]), _pad_offsets(theta[p]["b"], self.s_b[p])) for p in self.s_a
        }

    def adapters(self, theta) -> dict:
        """`{proj: {"a": U_a, "s": s_a, "core": V_a^T U_b, "s_out": s_b, "b": scale V_b^T}}` (the
        decoder's factor-wise adapter path): under a vmapped population only s_a, s_b are per member."""
        return {
            p: {
                "a": self.u_a[p],
                "s": sa,
                "core": self.vt_a[p] @ self.u_b[p],
                "s_out": sb,
                "b": self.scale * self.vt_b[p],
            }
            for p, (sa, sb) in self.singular_values(theta).items()
        }

    def apply(self, model: Model, member) -> tuple[Model, tuple]:
        layers = dict(model.params["layers"])
        for p, ab in self.frozen.items():
            _with_adapter(layers, p, ab)
        for p, adapter in self.adapters(member).items():
            _with_adapter(layers, p, adapter)
        return dataclasses.replace(model, params={**model.params, "layers": layers}), ()

    def to_lora(self, theta, cfg: TrainableConfig) -> dict:
        """The LoRA trainable of `cfg` (the warm start's) that `apply_trainable` runs as this member:
        `a = U_a diag(s_a) V_a^T`, `b = U_b diag(s_b) V_b^T`, plus the frozen adapters unchanged."""
        out = {p: {"a": ab["a"], "b": ab["b"] / cfg.lora_scale} for p, ab in self.frozen.items()}
        for p, (sa, sb) in self.singular_values(theta).items():
            out[p] = {
                "a": (self.u_a[p] * sa[:, None, :]) @ self.vt_a[p],
                "b": (self.u_b[p] * sb[:, None, :]) @ self.vt_b[p],
            }
        return out


def _svd_stack(x: np.ndarray) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Thin SVD of a stack `[L, m, n]` in float64: U `[L, m, k]`, s `[L, k]` (descending), V^T `[L, k, n]`."""
    u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return jnp.asarray(u, _f32), jnp.asarray(s, _f32), jnp.asarray(vt, _f32)


def essa_space(
    model: Model, lora: dict, cfg: TrainableConfig | None, *, alpha: float = 1.0, targets: tuple[str, ...] | None = None
) -> ESSASpace:
    """The paper's `ESSASpace` from a trained LoRA. Runs once, on the host, in float64.

    The model must not already carry this LoRA (the space adds it).

    Args:
        model: the base decoder.
        lora: the trained LoRA trainable (e.g. an SFT run's).
        cfg: its `TrainableConfig` (kind "lora").
        alpha: the evolving fraction of each factor's singular values (the top `floor(alpha * r)`).
        targets: the projections decomposed (None: the LoRA's adapters on q/k/v/o, as in the paper).

    Returns:
        The space.

    Raises:
        InputError: no LoRA, or targets the LoRA does not adapt.
    """
    if lora is None or cfg is None or cfg.kind != "lora":
        raise InputError("essa_space needs a trained LoRA and its TrainableConfig(kind='lora')")
    if targets is None:
        targets = tuple(p for p in ATTENTION_PROJECTIONS if p in lora)
        if not targets:
            raise InputError(
                f"the warm start has no adapter on an attention projection (it adapts {sorted(lora)}); "
                "set the ESSA targets"
            )
    missing = [t for t in targets if t not in lora]
    if missing:
        raise InputError(f"ESSA targets {missing} have no adapter in the warm start (it adapts {sorted(lora)})")
    frozen = {
        p: {"a": jnp.asarray(lora[p]["a"], _f32), "b": jnp.asarray(lora[p]["b"], _f32) * cfg.lora_scale}
        for p in sorted(lora)
        if p not in targets
    }
    fields = {k: {} for k in ("u_a", "s_a", "vt_a", "u_b", "s_b", "vt_b")}
    for p in sorted(targets):
        fields["u_a"][p], fields["s_a"][p], fields["vt_a"][p] = _svd_stack(lora[p]["a"])
        fields["u_b"][p], fields["s_b"][p], fields["vt_b"][p] = _svd_stack(lora[p]["b"])
    some = sorted(targets)[0]
    n_a = n_evolving(alpha, fields["s_a"][some].shape[-1])
    n_b = n_evolving(alpha, fields["s_b"][some].shape[-1])
    return ESSASpace(**fields, frozen=frozen, n_a=n_a, n_b=n_b, scale=float(cfg.lora_scale))


@struct.dataclass
class ESSAProductSpace(_Dense):
    """ESSA's product variant: each adapter's product `scale * a @ b = U diag(s) V^T` (r values per matrix).

    Also the random-subspace ES (random orthonormal U, V with s = 0). U, V are frozen leaves; theta
    `{proj: [L, k]}` holds the top-k singular values that evolve (k = floor(alpha * r)); the rest stay
    at `s0`. Build with `essa_product_space`.

    Attributes:
        u: `{proj: [L, in, r]}`.
        vt: `{proj: [L, r, out]}`.
        s0: `{proj: [L, r]}`, descending: the starting singular values.
        n_active: k, the evolving values per matrix.
    """

    u: dict
    vt: dict
    s0: dict
    n_active: int = struct.field(pytree_node=False, default=0)

    def init(self, model: Model | None = None, key: jax.Array | None = None):
        return {p: jnp.asarray(s[:, : self.n_active], _f32) for p, s in self.s0.items()}

    def singular_values(self, theta) -> dict:
        """Full `{proj: [L, r]}`: the evolving top-k followed by the frozen rest."""
        return {p: jnp.concatenate([theta[p].astype(_f32), self.s0[p][:, self.n_active :]], axis=-1) for p in self.s0}

    def adapters(self, theta) -> dict:
        """`{proj: {"a": U, "s": s, "b": V^T}}`: the decoder computes `((x @ U) * s) @ V^T`, so under
        a vmapped population only s carries the member axis."""
        return {p: {"a": self.u[p], "s": s, "b": self.vt[p]} for p, s in self.singular_values(theta).items()}

    def apply(self, model: Model, member) -> tuple[Model, tuple]:
        layers = dict(model.params["layers"])
        for p, usv in self.adapters(member).items():
            _with_adapter(layers, p, usv)
        return dataclasses.replace(model, params={**model.params, "layers": layers}), ()

    def to_lora(self, theta, cfg: TrainableConfig) -> dict:
        """A LoRA trainable for `cfg` (`apply_trainable` reproduces this member): a = U s, b = V^T / scale."""
        s = self.singular_values(theta)
        return {p: {"a": self.u[p] * s[p][:, None, :], "b": self.vt[p] / cfg.lora_scale} for p in s}


def _svd_lowrank(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of `a @ b` (a `[in, r]`, b `[r, out]`) via QR of the factors, in float64, without forming
    the `[in, out]` product: returns U `[in, r]`, s `[r]` (descending), V^T `[r, out]`."""
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(b.T)
    uk, s, vkt = np.linalg.svd(ra @ rb.T)
    return qa @ uk, s, vkt @ qb.T


def essa_product_space(
    model: Model,
    lora: dict | None = None,
    cfg: TrainableConfig | None = None,
    *,
    alpha: float = 1.0,
    rank: int = 8,
    targets: tuple[str, ...] | None = None,
    seed: int = 0,
) -> ESSAProductSpace:
    """An `ESSAProductSpace` from a LoRA trainable, or fresh (the random-subspace ES); on the host, in float64.

    The model must not already carry this LoRA (the space adds it; other adapters on the model are
    kept, concatenated along the rank axis).

    Args:
        model: the base decoder.
        lora: the LoRA trainable whose every adapter's product is decomposed (None: random orthonormal
            U, V of `rank` with s = 0).
        cfg: its `TrainableConfig`.
        alpha: the evolving fraction of each adapter's singular values (the largest), rounded down.
        rank: the random subspace's rank.
        targets: the random subspace's projections (default: all).
        seed: the random subspace's numpy seed.

    Returns:
        The space.
    """
    layers = model.params["layers"]
    u, vt, s0 = {}, {}, {}
    if lora is not None:
        if cfg is None or cfg.kind != "lora":
            raise InputError("essa_product_space: a LoRA warm start needs its TrainableConfig(kind='lora')")
        for p in sorted(lora):
            a = np.asarray(lora[p]["a"], np.float64)
            b = np.asarray(lora[p]["b"], np.float64) * cfg.lora_scale
            parts = [_svd_lowrank(a[l], b[l]) for l in range(a.shape[0])]
            u[p] = jnp.asarray(np.stack([x[0] for x in parts]), _f32)
            s0[p] = jnp.asarray(np.stack([x[1] for x in parts]), _f32)
            vt[p] = jnp.asarray(np.stack([x[2] for x in parts]), _f32)
        r = next(iter(s0.values())).shape[-1]
    else:
        targets = tuple(targets or PROJECTIONS)
        rng = np.random.default_rng(seed)
        for p in sorted(targets):
            L, d_in, d_out = layers[p].shape
            qa = np.linalg.qr(rng.standard_normal((L, d_in, rank)))[0]
            qb = np.linalg.qr(rng.standard_normal((L, d_out, rank)))[0]
            u[p] = jnp.asarray(qa, _f32)
            vt[p] = jnp.asarray(np.swapaxes(qb, -1, -2), _f32)
            s0[p] = jnp.zeros((L, rank), _f32)
        r = rank
    return ESSAProductSpace(u=u, vt=vt, s0=s0, n_active=n_evolving(alpha, r))


__all__ = [
    "normal_like",
    "TrainableSpace",
    "SteeringSpace",
    "FullSpace",
    "EggrollSpace",
    "ATTENTION_PROJECTIONS",
    "n_evolving",
    "ESSASpace",
    "essa_space",
    "ESSAProductSpace",
    "essa_product_space",
]
