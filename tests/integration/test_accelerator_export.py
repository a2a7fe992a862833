"""Accelerator readiness without an accelerator: the RL update, the sampler, the ES population
step and the SAE training step, at a small bf16 config on a 2-D mesh of 8 virtual CPU devices
(data=2 x fsdp=4), lowered with `jax.export` for platforms cuda and tpu (lowering only, nothing
runs): no host callback inside the programs, the intended shardings on their inputs (and the
update's outputs), bf16 weights and f32 optimizer state."""

from __future__ import annotations

from virtual_devices import run_script

SCRIPT = r"""
import functools, json
import jax, jax.numpy as jnp, numpy as np
from jax import export
import train_toy as T
from jaxsteer.models.generate import SamplingConfig, sample_tokens
from jaxsteer.train.build import build_model
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.rl.learner import BATCH_KEYS, setup_training
from jaxsteer.train.rl.step import train_step
from jaxsteer.train.sharding import batch_sharding, make_mesh, replicated

PLATFORMS = ("cuda", "tpu")
cfg = config_from_dict(T.config_dict("/tmp/unused", **{"model.dtype": "bfloat16", "trainable.kind": "lora",
                                                       "mesh.data": 2, "mesh.fsdp": 4, "prompts_per_step": 8,
                                                       "rl.loss.clip_eps_low": 0.2, "rl.loss.clip_eps_high": 0.28}))
model, _ = build_model(cfg.model)
mesh = make_mesh(2, 4)
setup = setup_training(cfg, model, mesh)
abstract = lambda tree: jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)

def matches(got, want, ndim):  # jax.export reports a replicated (or unused) input as None
    return want.is_fully_replicated if got is None else got.is_equivalent_to(want, ndim)

def report(exp, want_in):
    text = exp.mlir_module()
    flat_in = jax.tree_util.tree_flatten_with_path(want_in)[0]
    got_in = exp.in_shardings_jax(mesh)
    # GRPO reads no rewards
    used = [(g, w) for g, (path, w) in zip(got_in, flat_in) if "rewards" not in jax.tree_util.keystr(path)]
    return {"platforms": list(exp.platforms), "callbacks": text.count("callback"), "n_in": len(got_in),
            "in_shardings": all(matches(g, w.sharding, len(w.shape)) for g, w in used)}

# ---- the RL update (LoRA, 2 micro-batches, FSDP-sharded base, batch over data x fsdp)
M, rows, P, N = cfg.optimizer.micro_batches, cfg.rollouts_per_step // cfg.optimizer.micro_batches, 8, 4
shapes = {"tokens": ((M, rows, P + N), jnp.int32), "mask": ((M, rows, P + N), jnp.int32),
          "old_logp": ((M, rows, N), jnp.float32), "advantages": ((M, rows), jnp.float32),
          "rewards": ((M, rows), jnp.float32)}
batch = {k: jax.ShapeDtypeStruct(s, d, sharding=setup.batch_shardings[k]) for k, (s, d) in shapes.items()}
base, state = abstract(setup.model), abstract(setup.state)
step = jax.jit(functools.partial(train_step, spec=setup.spec, tx=setup.tx, prompt_width=P),
               in_shardings=(setup.base_shardings, setup.state_shardings, setup.batch_shardings),
               out_shardings=(setup.state_shardings, replicated(mesh)))
exp = export.export(step, platforms=PLATFORMS)(base, state, batch)
out_state = jax.eval_shape(step, base, state, batch)[0]
rl = report(exp, (base, state, batch))
rl["out_shardings"] = all(matches(g, s, len(x.shape)) for g, s, x in zip(
    exp.out_shardings_jax(mesh), jax.tree_util.tree_leaves(setup.state_shardings),
    jax.tree_util.tree_leaves(out_state)))
rl["weight_dtypes"] = sorted(
    {str(x.dtype) for k, x in setup.model.params["layers"].items() if k != "lora" and x.ndim == 3})
rl["opt_dtypes"] = sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(out_state["opt"]) if x.ndim > 0})
rl["trainable_dtypes"] = sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(out_state["trainable"])})
rl["fsdp_sharded_weights"] = sum(1 for s in jax.tree_util.tree_leaves(setup.base_shardings) if "fsdp" in str(s.spec))

# ---- the sampler (prompts over data x fsdp, the base as the update holds it)
B = 8
rows_s = batch_sharding(mesh, 2)
args = (base, jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=rows_s),
        jax.ShapeDtypeStruct((B, P), jnp.int32, sharding=rows_s),
        jax.ShapeDtypeStruct((1,), jnp.int32, sharding=replicated(mesh)),
        jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh)),
        jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated(mesh)))
sampling = SamplingConfig(N, 1.0, 0, 1.0, False)
sampler = jax.jit(lambda m, p, pm, stop, pad, key: sample_tokens(m, p, pm, stop, pad, key, (), sampling))
exp_s = export.export(sampler, platforms=PLATFORMS)(*args)
out = jax.eval_shape(sampler, *args)
sm = {"platforms": list(exp_s.platforms), "callbacks": exp_s.mlir_module().count("callback"),
      "in_shardings": all(matches(g, a.sharding, len(a.shape))
                          for g, a in zip(exp_s.in_shardings_jax(mesh), jax.tree_util.tree_leaves(args))),
      "out_dtypes": [str(x.dtype) for x in out], "has_while": "stablehlo.while" in exp_s.mlir_module()}

# ---- the ES population step (ESSA on a LoRA, CMA-ES; members split over data x fsdp with shard_map)
from jaxsteer.train.es import CMAES, essa_space, population_program
from jaxsteer.train.trainable import TrainableConfig, init_trainable
lcfg = TrainableConfig(kind="lora", lora_rank=4, lora_targets=("q_proj", "v_proj"))
lora = jax.tree_util.tree_map(lambda x: x + 0.1, init_trainable(model, lcfg, jax.random.PRNGKey(1)))
space, strategy = essa_space(model, lora, lcfg), CMAES(population=8, sigma=0.05)
es_state = strategy.init(space.init(model), jax.random.PRNGKey(0))
rep = lambda tree: jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.asarray(x).dtype, sharding=replicated(mesh)), tree)
members = jax.ShapeDtypeStruct(
    (8,), jnp.int32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"))))
# every member: same prompts
prompts = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated(mesh)) for a in args[1:5]]
pop_args = (rep(model), rep(space), rep(strategy), rep(es_state), members, *prompts)
exp_p = export.export(population_program, platforms=PLATFORMS)(
    *pop_args, sampling=SamplingConfig(N, 1.0, 0, 1.0, True), member_batch=None, mesh=mesh, axis=("data", "fsdp"))
es = {"platforms": list(exp_p.platforms), "callbacks": exp_p.mlir_module().count("callback"),
      "in_shardings": all(matches(g, a.sharding, len(a.shape))
                          for g, a in zip(exp_p.in_shardings_jax(mesh), jax.tree_util.tree_leaves(pop_args))),
      "cma_dtypes": sorted({str(jnp.asarray(x).dtype) for x in jax.tree_util.tree_leaves(es_state["opt"])})}

# ---- the SAE training step (latents split over fsdp, activations over data)
from jaxsteer import sae as S
from jaxsteer.train import sae as sae_train
scfg = S.SAEConfig(kind="topk", d_in=32, d_sae=128, k=4)
stcfg = sae_train.StepConfig(lr=1e-3, k_aux=8)
tx = sae_train.make_optimizer(stcfg)
st = sae_train.init_state(S.init_sae(scfg, jax.random.PRNGKey(0)), tx)
def latent_spec(x):
    spec = [("fsdp" if n == scfg.d_sae else None) for n in jnp.shape(x)]
    if "fsdp" in spec:
        spec = [s if i == spec.index("fsdp") else None for i, s in enumerate(spec)]
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
st_abs = jax.tree_util.tree_map(
    lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.asarray(x).dtype, sharding=latent_spec(x)), st)
x_abs = jax.ShapeDtypeStruct(
    (16, 32), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None)))
exp_a = export.export(sae_train.make_step(scfg, stcfg, tx), platforms=PLATFORMS)(st_abs, x_abs)
sae_out = exp_a.out_shardings_jax(mesh)[0]
sa = {"platforms": list(exp_a.platforms), "callbacks": exp_a.mlir_module().count("callback"),
      "in_shardings": all(matches(g, a.sharding, len(a.shape))
                          for g, a in zip(exp_a.in_shardings_jax(mesh), jax.tree_util.tree_leaves((st_abs, x_abs)))),
      "latents_split": sum(1 for a in jax.tree_util.tree_leaves(st_abs) if not a.sharding.is_fully_replicated),
      "opt_dtypes": sorted({str(jnp.asarray(x).dtype)
                            for x in jax.tree_util.tree_leaves(st["opt"]) if jnp.ndim(x) > 0})}
print("RESULT" + json.dumps({"rl": rl, "sampler": sm, "es": es, "sae": sa}))
"""


def test_hot_programs_lower_for_cuda_and_tpu():
    res = run_script(SCRIPT, devices=8, timeout=900)
    rl, sm, es, sa = res["rl"], res["sampler"], res["es"], res["sae"]
    for part in (rl, sm, es, sa):
        assert part["platforms"] == ["cuda", "tpu"]
        assert part["callbacks"] == 0, part  # nothing goes back to the host inside the programs
        assert part["in_shardings"], part
    assert rl["out_shardings"] and rl["fsdp_sharded_weights"] > 0, rl
    assert (
        rl["weight_dtypes"] == ["bfloat16"]
        and rl["opt_dtypes"] == ["float32"]
        and rl["trainable_dtypes"] == ["float32"]
    ), rl
    assert sm["has_while"] and sm["out_dtypes"] == ["int32", "float32", "int32"], sm
    assert es["cma_dtypes"] == ["float32", "int32"] or es["cma_dtypes"] == ["float32"], es
    assert sa["latents_split"] > 0 and sa["opt_dtypes"] == ["float32"], sa
