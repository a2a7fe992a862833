"""SAE training, a learner beside RL and ES on the shared `jaxsteer.train.run.Run`.

    from jaxsteer import sae
    from jaxsteer.train import sae as sae_train
    model_sae, history = sae_train.fit(sae.SAEConfig(kind="topk", d_in=16, d_sae=64, k=3), batches,
                                       sae_train.StepConfig(lr=3e-3, total_steps=1200))
    run_dir = sae_train.train_sae(sae_train.load_run_config("experiments/sae_topk.yaml", ["steps=100"]))

- `config`: the run's YAML (`SAERunConfig`, `load_run_config`).
- `step`: the optimizer, the jitted update (`make_step`), state init and latent sharding, `fit`.
- `activations`: the shuffled, resumable activation stream and its on-disk cache; `corpora`: text
  that ships with Python.
- `run`: `train_sae` / `eval_run` (`jaxsteer sae train` / `jaxsteer sae eval`).

The SAE as a model (architectures, losses, splice, evaluation, SAELens I/O) is `jaxsteer.sae`,
which imports nothing from here.
"""

from .activations import ActivationStream, CachedActivations, cache_activations, pack_tokens, read_texts
from .config import SAERunConfig, load_run_config
from .run import eval_run, load_sae, train_sae
from .step import (
    StepConfig,
    fit,
    geometric_median,
    init_b_dec,
    init_state,
    make_optimizer,
    make_step,
    shard_state,
)

__all__ = [
    "ActivationStream",
    "CachedActivations",
    "cache_activations",
    "pack_tokens",
    "read_texts",
    "SAERunConfig",
    "load_run_config",
    "eval_run",
    "load_sae",
    "train_sae",
    "StepConfig",
    "fit",
    "geometric_median",
    "init_b_dec",
    "init_state",
    "make_optimizer",
    "make_step",
    "shard_state",
]
