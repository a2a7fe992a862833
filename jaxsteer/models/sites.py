"""Site names: jaxsteer's own (`resid_post`, `z`, ...) and their TransformerLens aliases.

An alias is accepted wherever a site is (`record=`, an intervention's `site=`, the analysis
entry points, trace indexing). A TransformerLens name with a layer (`blocks.10.hook_resid_post`)
also selects that layer. Only names that mean the same value in both libraries are aliases:

    hook_resid_pre / hook_resid_mid / hook_resid_post      -> resid_pre / resid_mid / resid_post
    hook_attn_out / hook_mlp_out                           -> attn_out / mlp_out
    attn.hook_q / attn.hook_k / attn.hook_v                -> q / k / v (before RoPE, as in TL)
    attn.hook_z / attn.hook_pattern                        -> z / pattern

Not aliased, because they mean something else: TransformerLens' `hook_attn_in` / `hook_mlp_in`
are the residual *before* the norm (copied per head), and `ln1.hook_normalized` is `x / rms(x)`
*before* the norm weight, while jaxsteer's `attn_in` / `mlp_in` are the norm's output (after the
weight). Asking for one of them is an error that says so.
"""

from __future__ import annotations

import re

from ..errors import InputError

TL_ALIASES = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "attn.hook_q": "q",
    "attn.hook_k": "k",
    "attn.hook_v": "v",
    "attn.hook_z": "z",
    "attn.hook_pattern": "pattern",
}
# also accept the short forms without "attn." (TransformerLens' utils.get_act_name style: "hook_z")
TL_ALIASES.update({name.removeprefix("attn."): site for name, site in list(TL_ALIASES.items())})

NOT_ALIASED = {
    "hook_attn_in": "TransformerLens' hook_attn_in is the residual before the norm, per head; use 'resid_pre'",
    "hook_mlp_in": "TransformerLens' hook_mlp_in is the residual before the norm; use 'resid_mid'",
    "ln1.hook_normalized": "TransformerLens' ln1.hook_normalized is x / rms(x) before the norm weight; jaxsteer's "
    "'attn_in' is the norm's output after the weight",
    "ln2.hook_normalized": "TransformerLens' ln2.hook_normalized is x / rms(x) before the norm weight; jaxsteer's "
    "'mlp_in' is the norm's output after the weight",
}

_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def parse_site(name: str) -> tuple[str, int | None]:
    """`(site, layer or None)` for a jaxsteer site name or a TransformerLens hook name.

    Unknown names come back unchanged (the caller's `check_site` names the valid ones); the
    TransformerLens names that mean something else raise ValueError saying why.

    Args:
        name: a jaxsteer site or a TransformerLens hook name (e.g. `blocks.10.hook_resid_post`).

    Returns:
        `(site, layer)`, layer None when the name has none.
    """
    if not isinstance(name, str):
        raise TypeError(f"a site name must be a string, got {name!r}")
    layer = None
    m = _BLOCK.match(name)
    if m:
        layer, name = int(m.group(1)), m.group(2)
    if name in NOT_ALIASED:
        raise InputError(f"site {name!r} has no jaxsteer alias: {NOT_ALIASED[name]}")
    return TL_ALIASES.get(name, name), layer


def canonical_site(name: str) -> str:
    """The jaxsteer site a name (jaxsteer's or a TransformerLens alias) refers to; its layer is dropped."""
    return parse_site(name)[0]


__all__ = ["TL_ALIASES", "parse_site", "canonical_site"]
