"""Run in a subprocess by tests/train/sae/test_step.py: one SAE step with the latent axis split over 8
virtual CPU devices equals the same step on one device."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxsteer import sae  # noqa: E402
from jaxsteer.train.sae.step import StepConfig, init_state, make_optimizer, make_step, shard_state  # noqa: E402

assert len(jax.devices()) == 8
for kind in ("topk", "htopk"):
    cfg = sae.SAEConfig(kind=kind, d_in=16, d_sae=64, k=4)
    scfg = StepConfig(lr=1e-2, k_aux=8, dead_batches=1)
    tx = make_optimizer(scfg)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32))
    s0 = init_state(sae.init_sae(cfg, jax.random.PRNGKey(0)), tx)
    step = make_step(cfg, scfg, tx)
    ref = s0
    for _ in range(3):
        ref, m_ref = step(ref, x)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("model",))
    st = shard_state(init_state(sae.init_sae(cfg, jax.random.PRNGKey(0)), tx), mesh, "model", cfg.d_sae)
    assert st["sae"]["W_enc"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    for _ in range(3):
        st, m = step(st, x)
    assert not st["sae"]["W_dec"].sharding.is_fully_replicated  # stays split after the jitted step
    for k in ref["sae"]:
        np.testing.assert_allclose(np.asarray(st["sae"][k]), np.asarray(ref["sae"][k]), atol=1e-5, err_msg=k)
    np.testing.assert_allclose(float(m["loss"]), float(m_ref["loss"]), rtol=1e-5)
print("SHARDED_OK")
