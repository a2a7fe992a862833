"""Steering toolkit: extraction methods behind one API, llama.cpp control vectors, and an
evaluation harness that compares methods on one footing. See docs/steering.md."""

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
