"""Interpretability toolkit on jaxsteer traces: logit lens, activation / path / attribution /
relevance patching, attention comparison, linear probes, and steering-vector studies. See docs/analysis.md
(steering-vector extraction lives in `jaxsteer.steering`)."""

from ._common import single_token_ids, tokenize_pair
from .attention import AttentionComparison, attention_change, compare_patterns
from .head_swap import (
    HEAD_SWAP_ROUTES,
    HeadSwapResult,
    head_swap_interventions,
    head_swap_study,
)
from .lens import LensResult, accumulated_lens, accumulated_resid, logit_lens, token_rank, vector_lens
from .patching import (
    Node,
    PatchingResult,
    activation_patching,
    all_receivers,
    attribution_patching,
    compare_attribution,
    logit_diff_metric,
    normalise,
    path_patching,
    relevance_patching,
)
from .probes import (
    Activations,
    DecodabilityCausality,
    ProbeResult,
    decodability_vs_causality,
    harvest,
    probe_layers,
    train_probes,
)
from .studies import (
    AdaptiveSteer,
    CombinationGains,
    FirstTokenEffect,
    Persistence,
    combination_gains,
    combined_steer,
    first_token_effect,
    persistence,
    transfer_steer,
)
