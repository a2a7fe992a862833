"""The SFT learner (`algorithm: sft`): the negative log-likelihood of each prompt's reference
answer, one micro-batched jitted update per step, on a `Run`.

Per step: the next `prompts_per_step / process_count` examples of this process's shard, their
prompts followed by their targets (`batches.reference_batch`), one optimizer update on the token
mean NLL of the target tokens (the micro-batches' gradients accumulated inside the jit, each
normalised by the whole batch's target-token count, so the update does not depend on
`optimizer.micro_batches`). Log-probabilities are of the logits at `sampling.temperature`, as the
policy samples. The loop, data stream, held-out evaluation, checkpoints and export are the
gradient learners' shared ones (`gradient.train_loop`); SFT reads no `rl` settings.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...models.decoder import unembed
from ...models.generate import default_stop_tokens, pad_id_for
from ...models.params import Model
from ..build import Inputs
from ..config import ConfigError, TrainConfig
from ..distributed import gather_rows
from ..gradient import (
    GradientLearner,
    accumulate_gradients,
    apply_gradients,
    compile_update,
    describe_run,
    split_micro_batches,
    train_loop,
)
from ..run import Run
from ..scoring import completion_states, token_logprobs
from ..sharding import batch_sharding, global_batch, make_mesh, n_batch_shards, replicated
from ..state import TrainState, init_train_state, start_trainable
from ..trainable import TrainableConfig, build_policy
from .batches import ReferenceBatch, reference_batch

BATCH_KEYS = ("tokens", "mask")


@dataclasses.dataclass(frozen=True)
class SFTSpec:
    """Static description of the SFT update (part of the compiled program's key): the trainable,
    the temperature of the scored logits, the layer scan's rematerialisation."""

    trainable: TrainableConfig
    temperature: float = 1.0
    remat: bool | str = False


def sft_spec(cfg: TrainConfig) -> SFTSpec:
    """The SFT update a config asks for."""
    return SFTSpec(trainable=cfg.trainable, temperature=cfg.sampling.temperature, remat=cfg.model.remat_arg)


def nll_loss(params: dict, base: Model, mb: dict, spec: SFTSpec, prompt_width: int, denominator) -> tuple:
    """The summed NLL of one micro-batch's target tokens over the whole batch's `denominator`
    (its target-token count), and the micro-batch's metrics."""
    model, ivs = build_policy(base, params["trainable"], spec.trainable)
    tokens, mask = mb["tokens"], mb["mask"]
    h = completion_states(model, tokens, mask, ivs, completion_start=prompt_width, remat=spec.remat)
    logp, entropy = token_logprobs(
        unembed(model, h), tokens[:, prompt_width:], mask[:, prompt_width:], spec.temperature
    )
    cm = mask[:, prompt_width:].astype(jnp.float32)
    loss = -jnp.sum(jnp.asarray(logp, jnp.float32) * cm) / jnp.maximum(denominator, 1.0)
    sg = jax.lax.stop_gradient
    return loss, {"loss": sg(loss), "n_tokens": jnp.sum(cm), "entropy_sum": sg(jnp.sum(entropy * cm))}


def sft_step(base: Model, state: dict, batch: dict, *, spec: SFTSpec, tx, prompt_width: int) -> tuple[dict, dict]:
    """One optimizer update on a micro-batched reference batch (tokens, mask `[M, b, P + N]`).
    Returns `(new_state, metrics)`: loss, entropy (nats per target token), grad_norm (before
    clipping), update_norm."""
    denominator = jnp.sum(batch["mask"][:, :, prompt_width:].astype(jnp.float32))
    grad_fn = jax.grad(nll_loss, has_aux=True)
    params = {"trainable": state["trainable"]}
    grads, per_mb = accumulate_gradients(
        lambda p, mb: grad_fn(p, base, mb, spec, prompt_width, denominator), params, batch
    )
    new_state, metrics = apply_gradients(state, grads["trainable"], tx)
    n_tokens = jnp.sum(per_mb["n_tokens"])
    metrics.update(
        loss=jnp.sum(per_mb["loss"]),
        n_tokens=n_tokens,
        entropy=jnp.sum(per_mb["entropy_sum"]) / jnp.maximum(n_tokens, 1.0),
    )
    return new_state, metrics


def check_layout(cfg: TrainConfig, mesh) -> int:
    """Prompts per process; ConfigError when the batch does not split over processes, the mesh's
    batch shards or the micro-batches."""
    nproc, shards, m = jax.process_count(), n_batch_shards(mesh), cfg.optimizer.micro_batches
    if cfg.prompts_per_step % nproc:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split over {nproc} processes")
    if cfg.prompts_per_step % m or (cfg.prompts_per_step // m) % shards:
        raise ConfigError(
            f"prompts_per_step={cfg.prompts_per_step} must split into optimizer.micro_batches={m} micro-batches "
            f"divisible by the {shards} batch shards of the mesh "
            f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )
    return cfg.prompts_per_step // nproc


def setup_sft(cfg: TrainConfig, model: Model, mesh, tokenizer: Any = None) -> TrainState:
    """The base model on the mesh, the optimizer and the initial train state (from
    `model.init_from`'s run when set), as for every gradient learner (`state.init_train_state`)."""
    return init_train_state(cfg, model, mesh, cfg.steps, start_trainable(cfg, model, tokenizer))


class SFTLearner(GradientLearner):
    """One SFT run's compiled update, data stream and per-step logic (reference batch, update, record)."""

    def __init__(self, cfg: TrainConfig, inputs: Inputs, mesh):
        local_prompts = check_layout(cfg, mesh)
        setup = setup_sft(cfg, inputs.model, mesh, inputs.tokenizer)
        super().__init__(cfg, inputs, mesh, setup, local_prompts=local_prompts)
        self.spec = sft_spec(cfg)
        self.step_fn = compile_update(
            functools.partial(sft_step, spec=self.spec, tx=setup.tx),
            base_shardings=setup.base_shardings,
            state_shardings=setup.state_shardings,
            batch_shardings={k: batch_sharding(mesh, 3) for k in BATCH_KEYS},
            metric_sharding=replicated(mesh),
        )
        tok = inputs.tokenizer
        stop = default_stop_tokens(setup.model, tok)
        eos = getattr(tok, "eos_token_id", None) if tok is not None else None
        self.eos_id = eos if eos is not None else (stop[0] if stop else None)
        self.pad_id = pad_id_for(setup.model, tok)

    def batch(self) -> ReferenceBatch:
        """The next examples' prompts followed by their reference answers."""
        examples = next(self.data_iter)
        return reference_batch(
            examples,
            [self.inputs.encode(e) for e in examples],
            tokenizer=self.inputs.tokenizer,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=self.cfg.sampling.max_new_tokens,
            bucket=self.cfg.sampling.bucket,
        )

    def step(self, state: dict, rng: jax.Array, step: int) -> tuple[dict, jax.Array, dict]:
        """One training step: the reference batch, one update, the logged record. `rng` advances
        as in every gradient run (SFT draws nothing from it)."""
        t0 = time.perf_counter()
        rng, _ = jax.random.split(rng)
        batch = self.batch()
        t1 = time.perf_counter()
        local = split_micro_batches({"tokens": batch.tokens, "mask": batch.mask}, self.cfg.optimizer.micro_batches)
        state, m = self.step_fn(
            self.setup.model, state, {k: global_batch(v, self.mesh) for k, v in local.items()}, batch.prompt_width
        )
        m = jax.device_get(m)
        t2 = time.perf_counter()
        lengths = gather_rows(batch.lengths.astype(np.float32))
        record = {
            "loss": float(m["loss"]),
            "entropy": float(m["entropy"]),
            "completion_length": float(lengths.mean()),
            "target_tokens": float(m["n_tokens"]),
            "update_rows": batch.tokens.shape[0],
            "grad_norm": float(m["grad_norm"]),
            "update_norm": float(m["update_norm"]),
            "lr": float(self.setup.schedule(step)),
            "batch_s": t1 - t0,
            "update_s": t2 - t1,
            "step_s": t2 - t0,
        }
        return state, rng, record

    def describe(self, n_trainable: int) -> str:
        """The run's one-line description (model, trainable, prompts per step, mesh)."""
        return describe_run(
            self.cfg,
            self.setup.model,
            n_trainable,
            self.mesh,
            self.inputs.load_seconds,
            f"sft, {self.cfg.prompts_per_step} prompts",
        )

    def postfix(self, record: dict) -> dict:
        """The progress bar's postfix of a step's record."""
        return dict(
            loss=f"{record['loss']:.3f}",
            len=f"{record['completion_length']:.1f}",
            gnorm=f"{record['grad_norm']:.2g}",
            upd=f"{record['update_s']:.1f}s",
            refresh=False,
        )


def train_sft(cfg: TrainConfig, inputs: Inputs, run: Run, *, devices: Sequence | None = None) -> tuple[Any, list, dict]:
    """An SFT run on `run` (see the module docstring). Returns `(trainable, history, files)`."""
    return train_loop(cfg, inputs, run, SFTLearner(cfg, inputs, make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)))


__all__ = ["SFTSpec", "sft_spec", "nll_loss", "sft_step", "check_layout", "setup_sft", "SFTLearner", "train_sft"]
