"""Layer-wise relevance propagation (LRP) rules as a modified backward pass of the one decoder.

`forward(..., lrp_rules=RULES)` computes exactly the same values as a plain forward; only its
gradient changes. With every rule on, the decoder is linear in each layer's residual input
*along the gradient* (every non-linearity's local factor is held constant), so `x . grad` is a
relevance that is conserved from layer to layer: summed over positions and features it equals
the output (for a model without biases; biases absorb their share). This is the propagation of
RelP (relevance patching, Jafari et al. 2025, arXiv 2508.21258), which uses these rules by name:

- "LN-rule" (Ali et al. 2022): RMSNorm's `1 / rms(x)` is a constant in the backward pass, so the
  norm is the linear map `x -> w * x / rms` (every norm: attention, MLP, q/k, sandwich, final).
- "Identity-rule": an element-wise activation `y = f(x)` passes relevance through unchanged; its
  backward multiplies by `f(x) / x` instead of `f'(x)` (the MLP's SiLU / GELU and the final
  logit softcap's tanh).
- "Half-rule": the gated MLP's product `act(gate) * up` sends half of the gradient to each factor,
  so each branch receives half the relevance (the product is quadratic in its input).
- "AH-rule" (Ali et al. 2022): the attention probabilities are constants in the backward pass,
  so attention is the linear map `v -> P v`; q and k receive no relevance.

Linear layers keep their plain gradient (LRP-0), which the paper also uses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp

from ..errors import InputError

RULES = ("LN-rule", "Identity-rule", "Half-rule", "AH-rule")


def check_rules(rules: Iterable[str] | str | None) -> frozenset[str]:
    """The rules as a frozenset; a name that is not one of `RULES` is a ValueError.

    Args:
        rules: rule names, one name, or None (no rules).

    Returns:
        The rules.
    """
    if rules is None:
        return frozenset()
    rules = (rules,) if isinstance(rules, str) else tuple(rules)
    for r in rules:
        if r not in RULES:
            raise InputError(f"unknown LRP rule {r!r}; rules: {', '.join(RULES)}")
    return frozenset(rules)


def _stabilise(x: jax.Array) -> jax.Array:
    """`x` pushed 1e-6 away from zero (zero goes to +1e-6), a safe denominator."""
    return x + jnp.where(x >= 0, 1e-6, -1e-6).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def identity_rule(fn: Callable, x: jax.Array) -> jax.Array:
    """`fn(x)` whose backward multiplies by `fn(x) / x` (the Identity-rule) instead of `fn'(x)`."""
    return fn(x)


def _identity_fwd(fn, x):
    y = fn(x)
    return y, (x, y)


def _identity_bwd(fn, res, ct):
    x, y = res
    return ((ct * (y / _stabilise(x))).astype(x.dtype),)


identity_rule.defvjp(_identity_fwd, _identity_bwd)


def half_rule(product: jax.Array) -> jax.Array:
    """`product` unchanged, with half of its gradient (the Half-rule for `a * b`)."""
    half = product * 0.5
    return half + jax.lax.stop_gradient(half)


def activation(fn: Callable, rules: frozenset[str]) -> Callable:
    """`fn`, or `fn` under the Identity-rule when it is among `rules`.

    Args:
        fn: an elementwise activation.
        rules: the LRP rules in force.

    Returns:
        `fn` or its Identity-rule version.
    """
    return functools.partial(identity_rule, fn) if "Identity-rule" in rules else fn


__all__ = ["RULES", "check_rules", "identity_rule", "half_rule", "activation"]
