"""Sparse autoencoders as models: architectures, losses, splicing, evaluation, SAELens format.

    from jaxsteer import sae
    cfg = sae.SAEConfig(kind="topk", d_in=576, d_sae=9216, k=32, layer=15)
    model_sae = sae.init_sae(cfg, jax.random.PRNGKey(0))
    z = sae.encode(model_sae, x)            # [..., d_sae]
    x_hat = sae.decode(model_sae, z)
    logits, _ = jaxsteer.forward(model, tokens, interventions=[sae.Splice(model_sae)])

Training (the step, `fit`, `jaxsteer sae train` runs) is on the train side: `jaxsteer.train.sae`.
See docs/sae.md.
"""

from .arch import (
    KINDS,
    SAE,
    SAEConfig,
    astype,
    decode,
    encode,
    encoder_flops,
    fold_decoder_norm,
    init_sae,
    kron_full_matrices,
    mand,
    pre_acts,
    reconstruct,
    residual_reconstruct,
)
from .losses import htopk_errors, htopk_loss, train_forward

try:  # modules written after the core; keep the core importable on its own
    from .splice import Splice, feature_acts, site_activations
except ImportError:  # pragma: no cover
    pass

try:
    from .evaluate import evaluate_sae, plot_ev_by_k
    from .flow import FeatureGraph, feature_flow, flow_graph
    from .saelens import list_sae_ids, load_gemma_scope, load_saelens, save_saelens
except ImportError:  # pragma: no cover
    pass
