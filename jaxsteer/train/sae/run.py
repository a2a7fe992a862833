"""A training run: `jaxsteer sae train CONFIG.yaml` and `jaxsteer sae eval RUN_DIR`.

The run directory is a shared `jaxsteer.train.run.Run` (lock, `config.yaml`, Orbax
`checkpoints/` with the SAE parameters, optimizer state, step, dead-latent counters and the
activation stream's position in the metadata, `metrics.jsonl` + `tb/`, `summary.json`), plus at
the end `sae/` (SAELens format), `eval.json` and, for HierarchicalTopK, `ev_by_k.png`. As for
the RL runs, a fresh run clears old checkpoints and `--resume` continues from the latest one; the
result is the same as an uninterrupted run (tested).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ...config import config_to_dict
from ...errors import InputError
from ...sae.arch import SAE, SAEConfig, init_sae, reconstruct
from ...sae.evaluate import evaluate_sae, plot_ev_by_k
from ...sae.losses import rms
from ...sae.saelens import load_saelens, save_saelens
from ...sae.splice import site_width
from ..build import build_model
from ..checkpoint import decode_data_state, encode_data_state, model_identity
from ..run import Run
from .activations import ActivationStream, CachedActivations, cache_activations, pack_tokens, read_texts
from .config import SAERunConfig, load_run_config
from .step import StepConfig, init_b_dec, init_jumprelu_threshold, init_state, make_optimizer, make_step, shard_state


def sae_config(cfg: SAERunConfig, d_model: int) -> SAEConfig:
    """The SAE a run trains; `d_model` is the width of the run's site (`splice.site_width`)."""
    s = cfg.sae
    return SAEConfig(
        kind=s.kind,
        d_in=d_model,
        d_sae=s.d_sae or s.expansion * d_model,
        k=s.k,
        kron_heads=s.kron_heads,
        kron_m=s.kron_m,
        kron_n=s.kron_n,
        dtype=s.dtype,
        matryoshka_widths=tuple(int(w) for w in s.matryoshka_widths),
        decoder_bias=not cfg.base_sae,
        site=cfg.site,
        layer=cfg.layer,
        model=cfg.model.spec,
    )


def step_config(cfg: SAERunConfig, d_model: int) -> StepConfig:
    t, o = cfg.train, cfg.optimizer
    return StepConfig(
        lr=o.lr,
        warmup_steps=o.warmup_steps,
        decay_start=o.decay_start,
        total_steps=cfg.steps,
        grad_clip=o.grad_clip,
        k_aux=t.k_aux or d_model // 2,
        aux_coef=t.aux_coef,
        dead_batches=max(1, t.dead_tokens // t.batch_size),
        threshold_lr=t.threshold_lr,
        htopk_levels=tuple(int(j) for j in t.htopk_levels),
        l0_coef=t.l0_coef,
        l0_warmup_steps=t.l0_warmup_steps,
        jumprelu_bandwidth=t.jumprelu_bandwidth,
    )


def load_model(cfg: SAERunConfig):
    """`(model, tokenizer)` of the run's `model` section (`train.build.build_model`)."""
    return build_model(cfg.model)


def token_windows(cfg: SAERunConfig, tokenizer, text: str | None = None) -> np.ndarray:
    """Packed `[N, context]` token windows of the run's text (or `text`)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return pack_tokens(read_texts(text or cfg.text), tokenizer, cfg.context, bos)


def split_windows(cfg: SAERunConfig, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out eval) windows: the last `eval.fraction` of them are held out."""
    n_eval = max(1, int(round(len(windows) * cfg.eval.fraction))) if len(windows) > 1 else 0
    return windows[: len(windows) - n_eval], windows[len(windows) - n_eval :]


def load_sae(path: str) -> SAE:
    """An SAE from a run directory (its `sae/`) or a SAELens directory."""
    sub = os.path.join(path, "sae")
    return load_saelens(sub if os.path.isdir(sub) else path)


def _stream(cfg: SAERunConfig, model, windows: np.ndarray, say: Callable = print):
    """The activation source: on the fly, or the `.npy` cache (built first, one pass over the
    training windows, when the file does not exist yet)."""
    b = cfg.buffer
    live = ActivationStream(
        model,
        windows,
        site=cfg.site,
        layer=cfg.layer,
        batch_size=cfg.train.batch_size,
        contexts_per_forward=b.contexts_per_forward,
        buffer_batches=b.buffer_batches,
        seed=cfg.seed,
        skip_first=b.skip_first,
    )
    if not b.cache:
        return live
    if not os.path.exists(b.cache):
        n = len(windows) * (cfg.context - b.skip_first) // cfg.train.batch_size
        say(f"caching {n * cfg.train.batch_size} activations ({cfg.site}, layer {cfg.layer}) to {b.cache}")
        os.makedirs(os.path.dirname(os.path.abspath(b.cache)), exist_ok=True)
        cache_activations(live, n, b.cache + ".tmp.npy")
        os.replace(b.cache + ".tmp.npy", b.cache)
    return CachedActivations(b.cache, cfg.train.batch_size, seed=cfg.seed)


def _fresh_state(cfg, stream, sae_cfg, tx, base) -> dict:
    """Initial state: `b_dec` from the first batch (the stream is rewound afterwards)."""
    s0 = stream.get_state()
    x0 = np.asarray(next(stream))
    target = x0 if base is None else x0 - np.asarray(reconstruct(base, jnp.asarray(x0)), np.float32)
    stream.set_state(s0)
    sae = init_sae(sae_cfg, jax.random.PRNGKey(cfg.seed))
    sae = init_jumprelu_threshold(
        init_b_dec(sae, target, cfg.train.b_dec_init), target, cfg.train.jumprelu_init_threshold
    )
    return init_state(sae, tx, act_scale=float(rms(jnp.asarray(target))))


def restore_state(run: Run, template: dict, **kw) -> tuple[dict, dict | None]:
    """`run.restore(template, **kw)`, migrating checkpoints written before the state had
    `act_scale` (jaxsteer before commit f46034b): those are restored without it and resume with
    `act_scale = 1`, which is what that code did implicitly (JumpReLU thresholds, and so their Adam
    moments, optimised in activation units; other kinds never read it), so the run continues
    exactly as it would have."""
    saved = run.saved_tree()
    legacy = saved is not None and bool(saved) and "act_scale" not in saved
    if legacy:
        template = {k: v for k, v in template.items() if k != "act_scale"}
    state, meta = run.restore(template, **kw)
    if legacy and meta is not None:
        state = dict(state, act_scale=jnp.asarray(1.0, jnp.float32))
        run.say(
            "checkpoint written before the SAE state had act_scale (jaxsteer < f46034b): resuming with "
            "act_scale = 1, the unit that version optimised JumpReLU thresholds in"
        )
    return state, meta


def train_sae(
    cfg: SAERunConfig,
    *,
    model=None,
    tokenizer=None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> str:
    """Train the run described by `cfg` (or, with `resume`, continue it from its latest
    checkpoint) on the shared `jaxsteer.train.run.Run` (lock, config.yaml, checkpoints, metrics,
    progress bar, summary.json). Returns the run directory."""
    run = Run(cfg.output_dir, config=cfg, resume=resume, keep=cfg.checkpoint.keep, progress=progress, plot=False)
    try:
        if model is None:
            model, tokenizer = load_model(cfg)
        train_w, _ = split_windows(cfg, token_windows(cfg, tokenizer))
        width = site_width(cfg.site, model.config)
        sae_cfg, scfg = sae_config(cfg, width), step_config(cfg, width)
        base = load_sae(cfg.base_sae) if cfg.base_sae else None
        tx = make_optimizer(scfg)
        stream = _stream(cfg, model, train_w, run.say)
        identity = model_identity(model, cfg.model.spec)
        trainable = json.loads(json.dumps({"sae": sae_cfg.to_dict(), "step": dataclasses.asdict(scfg)}))
        template = init_state(init_sae(sae_cfg, jax.random.PRNGKey(cfg.seed)), tx)
        state, meta = restore_state(run, template, identity=identity, trainable_config=trainable)
        if meta is None:
            state = _fresh_state(cfg, stream, sae_cfg, tx, base)
        else:
            stream.set_state(decode_data_state(meta["data"]))
        state = place_state(state, cfg, sae_cfg.d_sae)
        step = make_step(sae_cfg, scfg, tx, base)
        state = _loop(run, cfg, state, step, stream, {"model": identity, "trainable": trainable}, stop_after)
    except BaseException:
        run.close()
        raise
    if int(state["step"]) < cfg.steps:
        run.close()
        return cfg.output_dir
    path = save_saelens(
        SAE(jax.device_get(state["sae"]), sae_cfg), os.path.join(cfg.output_dir, "sae"), context_size=cfg.context
    )
    run.files["sae"] = path
    run.finish({"steps": int(state["step"]), "sae": sae_cfg.to_dict()})
    return cfg.output_dir


def latent_mesh(n_devices: int, d_sae: int) -> jax.sharding.Mesh:
    """A one-axis mesh ("model") over the first `n_devices` devices (0: all) for splitting `d_sae`."""
    devices = jax.devices()
    n = n_devices or len(devices)
    if n > len(devices):
        raise InputError(f"shard_latents={n_devices}: only {len(devices)} devices are visible")
    if d_sae % n:
        raise InputError(f"shard_latents={n}: d_sae={d_sae} is not divisible by the number of devices")
    return jax.sharding.Mesh(np.array(devices[:n]), ("model",))


def place_state(state: dict, cfg: SAERunConfig, d_sae: int) -> dict:
    """The training state with its latent axis split over `cfg.shard_latents` devices
    (`train.shard_state`); unchanged for one device."""
    if cfg.shard_latents == 1:
        return state
    return shard_state(state, latent_mesh(cfg.shard_latents, d_sae), "model", d_sae)


def _loop(run, cfg, state, step, stream, meta, stop_after):
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    t0, n0 = time.perf_counter(), run.start_step
    with run.progress(total=cfg.steps, desc="sae") as bar:
        for i in range(run.start_step, end):
            state, m = step(state, jnp.asarray(next(stream)))
            done = i + 1
            if done % cfg.log_every == 0 or done == end:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                m["activations_per_s"] = (done - n0) * cfg.train.batch_size / max(time.perf_counter() - t0, 1e-9)
                t0, n0 = time.perf_counter(), done
                run.log(done, m)
                bar.set_postfix(
                    ev=f"{m['explained_variance']:.3f}",
                    l0=f"{m['l0']:.1f}",
                    dead=f"{m['dead_fraction']:.3f}",
                    act_s=f"{m['activations_per_s']:.0f}",
                )
            bar.update(1)
            if run.due(done, cfg.checkpoint.every, end):
                run.save(
                    done, state, dict(meta, data=encode_data_state(stream.get_state()), config=config_to_dict(cfg))
                )
    return state


def eval_run(run_dir: str, *, contexts: int | None = None, model=None, tokenizer=None, say: Callable = print) -> dict:
    """Evaluate a finished run on its held-out windows; writes `eval.json` (+ `ev_by_k.png`)."""
    cfg = load_run_config(os.path.join(run_dir, "config.yaml"), warn=False)
    if model is None:
        model, tokenizer = load_model(cfg)
    if cfg.eval.text:
        windows = token_windows(cfg, tokenizer, cfg.eval.text)
    else:
        windows = split_windows(cfg, token_windows(cfg, tokenizer))[1]
    n = contexts or cfg.eval.contexts
    windows = windows[:n]
    batch = min(8, len(windows))
    base = load_sae(cfg.base_sae) if cfg.base_sae else None
    sae = load_sae(run_dir)
    if base is not None:
        res = evaluate_sae(model, base, windows, batch=batch, residual=sae, skip_first=cfg.buffer.skip_first)
        res["base_only"] = evaluate_sae(model, base, windows, batch=batch, skip_first=cfg.buffer.skip_first)
    else:
        res = evaluate_sae(model, sae, windows, batch=batch, skip_first=cfg.buffer.skip_first)
    res.update(kind=sae.config.kind, d_sae=sae.config.d_sae, k=sae.config.k, layer=cfg.layer, site=cfg.site)
    with open(os.path.join(run_dir, "eval.json"), "w") as f:
        json.dump(res, f, indent=1)
    if "ev_by_k" in res:
        plot_ev_by_k(
            {"HierarchicalTopK": res["ev_by_k"]},
            os.path.join(run_dir, "ev_by_k.png"),
            title=f"{cfg.model.spec} L{cfg.layer} {cfg.site}",
        )
    say(json.dumps({k: v for k, v in res.items() if k != "ev_by_k"}, indent=1))
    return res


__all__ = [
    "sae_config",
    "step_config",
    "latent_mesh",
    "place_state",
    "token_windows",
    "split_windows",
    "load_sae",
    "restore_state",
    "train_sae",
    "eval_run",
]
