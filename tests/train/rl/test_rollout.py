"""Rollouts data-parallel over the mesh, on 8 virtual CPU devices (a subprocess: XLA_FLAGS must be
set before jax is imported).

- `sharding.sample_on_mesh` equals the unsharded sampler token for token (same key; sampled, with
  G = 2 rows per prompt and prompts of different lengths) on data=8 and on data=4 x fsdp=2 with the
  weights fsdp-split and a steering intervention, and with the refill sampler on each device;
- each device computes only its slice: the outputs are split over ("data", "fsdp") and the
  compiled per-device program holds 1 prompt, 2 rows and a 2-row K/V cache (not 8 / 16);
- `rl.rollout.collect` and `evaluate_policy` on the 8-device mesh give the one-device batch and
  accuracy (prompts that do not divide over the devices are padded and dropped).
"""

from __future__ import annotations

from virtual_devices import run_script

SCRIPT = r"""
import dataclasses, json, re
import jax, jax.numpy as jnp, numpy as np
assert jax.device_count() == 8
from conftest import random_model
import train_toy as T
from jaxsteer.models.generate import SamplingConfig, prepare_prompts, sample_tokens
from jaxsteer.models.interventions import Steer
from jaxsteer.train.config import SamplingSpec
from jaxsteer.train.evaluate import evaluate_policy
from jaxsteer.train.rewards import get_reward_fn
from jaxsteer.train.rl.rollout import collect
from jaxsteer.train.sharding import (batch_sharding, make_mesh, replicate, sample_on_mesh, sample_rows, put,
                                     tree_shardings)

out = {}
model = random_model()
rng = np.random.RandomState(0)
ids = [rng.randint(2, 53, size=rng.randint(3, 12)).tolist() for _ in range(8)]
prepared = prepare_prompts(model, ids, max_new_tokens=6, bucket=8, stop_tokens=(1,))
spec = SamplingConfig(6, temperature=1.0, samples_per_prompt=2)
key = jax.random.PRNGKey(3)
steer = (Steer(site="resid_post", layers=(1,), vector=jnp.asarray(rng.normal(size=32), jnp.float32)),)
refill = dataclasses.replace(spec, refill_slots=1)  # each device: 1 slot for its 2 rows, refilled once
cases = {"data8": (8, 1, (), spec), "data4_fsdp2_steered": (4, 2, steer, spec),
         "data4_fsdp2_refill": (4, 2, steer, refill)}
for name, (data, fsdp, ivs, run_spec) in cases.items():
    ref = [np.asarray(x) for x in sample_tokens(model, *prepared.args, key, ivs, spec)]
    mesh = make_mesh(data, fsdp)
    m = put(model, tree_shardings(model, mesh, shard=fsdp > 1))
    g = sample_on_mesh(m, prepared, key, ivs, run_spec, mesh)
    out[name] = {"tokens_equal": bool((g.tokens == ref[0]).all()), "lengths_equal": bool((g.lengths == ref[2]).all()),
                 "logp_diff": float(np.abs(g.logprobs - ref[1]).max()), "rows": len(g.tokens),
                 "split_weights": sorted({str(x.sharding.spec) for x in jax.tree_util.tree_leaves(m)})}

mesh = make_mesh(8, 1)
prompt, mask = (jax.make_array_from_process_local_data(batch_sharding(mesh, 2, micro=False), x)
                for x in (prepared.tokens, prepared.mask))
args = replicate((model, prepared.stop_ids, key), mesh)
res = sample_rows(args[0], prompt, mask, args[1], 0, args[2], (), sampling=spec, mesh=mesh)
compiled = sample_rows.lower(args[0], prompt, mask, args[1], 0, args[2], (), sampling=spec, mesh=mesh).compile()
hlo = compiled.as_text()
P = prepared.tokens.shape[1]
entry = [l for l in hlo.splitlines() if l.startswith("ENTRY")][0]
whiles = [l for l in hlo.splitlines() if " while(" in l]
out["program"] = {
    "out_specs": [str(x.sharding.spec) for x in res],
    "per_device_out": [list(s.data.shape) for s in res[0].addressable_shards][:2],
    "entry": entry[entry.index("->"):],
    "prompt_param": sorted(set(re.findall(rf"s32\[\d+,{P}\]", entry.split("->")[0]))),
    "cache_shapes": sorted(set(re.findall(rf"f32\[3,(\d+),{P + 6},2,8\]", "\n".join(whiles)))),
}

examples = T.examples(6)  # 6 prompts x G=4: do not divide over 8 devices -> padded, then dropped
policy = model  # the toy's prompt ids and reward fit its vocabulary
kw = dict(group_size=4, calls=1, tokenizer=None, key=jax.random.PRNGKey(5),
          reward_fn=get_reward_fn(T.first_token_reward), advantage_fn=lambda r: r,
          sampling=SamplingSpec(max_new_tokens=4, bucket=8))
ex_ids = [e.meta["prompt_ids"] for e in examples]
one, eight = (collect(policy, (), examples, ex_ids, mesh=m, **kw) for m in (None, make_mesh(4, 2)))
out["collect"] = {"tokens_equal": bool((one.tokens == eight.tokens).all()),
                  "rewards_equal": bool((one.rewards == eight.rewards).all()),
                  "rows": [len(one.tokens), len(eight.tokens)]}
ev = [evaluate_policy(policy, (), examples, ex_ids, tokenizer=None, reward_fn=get_reward_fn(T.first_token_reward),
                      max_new_tokens=3, samples=2, mesh=m) for m in (None, make_mesh(8, 1))]
out["evaluate"] = [[e["greedy_acc"], e["pass1"]] for e in ev]
print("RESULT" + json.dumps(out))
"""


def test_sharded_rollouts_equal_unsharded_and_split_the_work():
    out = run_script(SCRIPT, devices=8, timeout=1200)
    for name in ("data8", "data4_fsdp2_steered", "data4_fsdp2_refill"):
        r = out[name]
        assert r["tokens_equal"] and r["lengths_equal"] and r["logp_diff"] < 1e-4 and r["rows"] == 16, (name, r)
    assert any("fsdp" in s for s in out["data4_fsdp2_steered"]["split_weights"]), out
    p = out["program"]
    assert all("data" in s for s in p["out_specs"]), p  # rows over the batch axes (fsdp has size 1 here)
    assert p["per_device_out"] == [[2, 6], [2, 6]], p  # 16 rows / 8 devices
    assert p["entry"].startswith("-> (s32[2,6]"), p  # the per-device program returns its 2 rows only
    assert len(p["prompt_param"]) == 1 and p["prompt_param"][0].startswith("s32[1,"), p  # 1 prompt per device
    assert set(p["cache_shapes"]) == {"1", "2"}, p  # K/V caches of 1 prompt (prefill) and its 2 rows, not 8 / 16
    assert out["collect"]["tokens_equal"] and out["collect"]["rewards_equal"] and out["collect"]["rows"] == [24, 24], (
        out
    )
    assert out["evaluate"][0] == out["evaluate"][1], out
