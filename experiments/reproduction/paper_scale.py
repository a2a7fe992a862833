"""Part `paper_scale`: the exact commands of the paper-scale configs, for a GPU or TPU (issue 18 item 8).

Nothing is trained here: the part reads the shipped paper configs (experiments/paper_*.yaml), lists
their recipe (model, algorithm, budget, step size) and the commands that plan and run them, and the
roofline lower bound `jaxsteer plan --device` predicts for each (measured nowhere yet: no GPU or TPU
was lent to the sessions that wrote this report).
"""

from __future__ import annotations

import common

TITLE = "Paper-scale configs: the commands for a GPU or TPU"

CONFIGS = [
    ("paper_qwen2.5_math_1.5b_steering.yaml", "data=8", "h100"),
    ("paper_qwen2.5_math_7b_steering.yaml", "data=8", "h100"),
    ("paper_llama3.1_8b_instruct_steering.yaml", "data=8", "h100"),
    ("paper_qwen2.5_math_7b_essa.yaml", "data=8", "h100"),
]


def _recipe(cfg) -> dict:
    """The budget and step size of a training config, as plain values."""
    es = cfg.is_es
    return {
        "model": cfg.model.spec,
        "algorithm": cfg.algorithm,
        "steps": cfg.steps,
        "prompts_per_step": cfg.prompts_per_step,
        "group": cfg.group_size,
        "rollouts_per_step": cfg.rollouts_per_step,
        "max_new_tokens": cfg.sampling.max_new_tokens,
        "step_size": f"es.sigma {cfg.es.sigma:g}" if es else f"optimizer.lr {cfg.optimizer.lr:g}",
    }


def run(ctx: common.Context) -> dict:
    """Each config's recipe and its plan / train commands (no training)."""
    from jaxsteer.train import load_config

    rows = []
    for name, mesh, device in CONFIGS:
        path = common.cfg_path(name)
        cfg = load_config(str(common.ROOT / path), warn=False)
        rows.append({
            "config": path,
            **_recipe(cfg),
            "plan": f"jaxsteer plan {path} --mesh {mesh} --device {device}",
            "train": f"jaxsteer train {path}",  # the default mesh puts every device on the data axis
        })  # fmt: skip
    return {"rows": rows}


def section(result: dict) -> str:
    """Markdown: the recipe table and the commands."""
    lines = [
        "The papers' own settings, shipped as configs; each needs the model's weights (a hub id or a local "
        "Hugging Face folder) and the data files named in it. `jaxsteer plan` checks memory per device and "
        "prints a roofline lower bound for the step (docs/scale.md) and the micro-batching that fits; `jaxsteer "
        "train` uses every visible device (mesh.data = -1). None of these has been run here.",
        "",
        "| config | model | algorithm | steps | prompts x group | new tokens | step size |",
        "|---|---|---|---:|---|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| `{r['config']}` | {r['model']} | {r['algorithm']} | {r['steps']} | {r['prompts_per_step']} x "
            f"{r['group']} = {r['rollouts_per_step']} | {r['max_new_tokens']} | {r['step_size']} |"
        )
    lines += ["", "Commands (8 x H100; see docs/scale.md for TPU v5e meshes):", "",
              "<!-- docs-test: skip: the paper models' weights come from the hub and need a GPU or TPU -->",
              "```bash"]  # fmt: skip
    for r in result["rows"]:
        lines += [r["plan"], r["train"]]
    lines += ["```"]
    return "\n".join(lines)
