"""Steering toolkit: extraction methods behind one API, llama.cpp control vectors, and an
evaluation harness that compares methods on one footing (docs/steering.md); LinEAS, learned affine
steering with a distributional loss (`lineas`, docs/analysis.md)."""

from .extract import (
    METHODS,
    ContrastData,
    contrast_data,
    contrast_vector,
    extract,
    match_norms,
    mean_difference,
    pca_direction,
    probe_direction,
    read_weights,
    register_method,
    sae_direction,
    sae_features,
    supervised_vector,
)
from .lineas import LinEASResult, sliced_wasserstein, train_lineas, wasserstein_1d
