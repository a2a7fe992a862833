"""Planted sparse data for the SAE tests: samples that are sparse positive combinations of a known
unit-norm dictionary, a batch stream over them, and the fraction of the dictionary an SAE recovered."""

import numpy as np


def planted(n, d=16, n_atoms=32, active=3, seed=0):
    """Samples that are sparse positive combinations of a planted unit-norm dictionary."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = np.stack([rng.choice(n_atoms, active, replace=False) for _ in range(n)])
    coef = rng.uniform(0.5, 1.5, size=(n, active))
    x = np.einsum("na,nad->nd", coef, atoms[idx]) + 0.3  # an offset for b_dec to find
    return x.astype(np.float32), atoms


def batches(x, batch, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        yield x[rng.choice(len(x), batch, replace=False)]


def recovered_fraction(w_dec, atoms, threshold=0.9):
    w = np.asarray(w_dec, np.float64)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return float(np.mean((atoms @ w.T).max(axis=1) > threshold))
