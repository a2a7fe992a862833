"""SAE metrics (jaxsteer.sae.evaluate) on a tiny random model: an identity SAE explains all the
variance and recovers all the loss."""

import numpy as np

from jaxsteer import sae
from tests.sae.test_splice import identity_sae, model  # noqa: F401, F811  (the tiny Llama fixture, d_model 16)

V = 50


def test_identity_sae_recovers_all_loss(model):  # noqa: F811 (the imported fixture)
    ident = identity_sae(layer=1)
    windows = np.random.RandomState(2).randint(0, V, (8, 12))
    res = sae.evaluate_sae(model, ident, windows, batch=4)
    assert res["explained_variance"] > 1 - 1e-6
    np.testing.assert_allclose(res["ce_sae"], res["ce_clean"], atol=1e-5)
    np.testing.assert_allclose(res["loss_recovered"], 1.0, atol=1e-4)
