"""The newcomer path without torch: in a process where torch is not installed, the default GGUF
model and its tokenizer load, generation with a steering vector works, and `jaxsteer train`
runs one RL step of the main job's config. (The base install has no torch; the test extras do,
which once hid a GGUF path that needed it.)

"Not installed" is simulated honestly: the subprocess runs with `python -S` on a copy of the
environment's site-packages made of symlinks that leaves torch out, so `importlib.util.find_spec`
and transformers' availability checks see no torch at all (a meta-path hook that raises on
import would instead make transformers' own `find_spec("torch")` probe crash)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import tests

ROOT = pathlib.Path(tests.ROOT)

SCRIPT = textwrap.dedent(
    """
    import sys
    try:
        import torch  # noqa: F401
        raise SystemExit("torch is importable: the test environment is not torch-free")
    except ModuleNotFoundError:
        pass

    import json
    import numpy as np
    import jaxsteer
    from jaxsteer.cli import main

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    shape = (model.config.n_layers, model.config.d_model)
    vec = 4.0 * np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    plain = jaxsteer.generate(model, ["What is 2 + 3?"], tokenizer=tok, greedy=True, max_new_tokens=6)
    steered = jaxsteer.generate(model, ["What is 2 + 3?"], tokenizer=tok, greedy=True, max_new_tokens=6,
                                interventions=[jaxsteer.Steer(vec)])
    out_dir = sys.argv[1]
    code = main(["train", sys.argv[2], "steps=1", "rl.group_size=2", "prompts_per_step=2",
                 "sampling.max_new_tokens=4", "eval.n=4", "eval.batch_size=4", "checkpoint.every=1",
                 f"output_dir={out_dir}"])
    print(json.dumps({"plain": plain.texts[0], "steered": steered.texts[0], "code": code,
                      "torch_loaded": "torch" in sys.modules}))
    """
)


TORCH_DISTRIBUTIONS = ("torch", "functorch", "torchgen")


def _site_packages_without_torch(dest: pathlib.Path) -> pathlib.Path:
    """A folder of symlinks to everything in this environment's site-packages but torch."""
    import jax

    site = pathlib.Path(jax.__file__).resolve().parents[1]
    dest.mkdir()
    for entry in site.iterdir():
        if entry.name.split("-")[0].split(".")[0].lower() not in TORCH_DISTRIBUTIONS:
            (dest / entry.name).symlink_to(entry)
    return dest


def test_load_generate_and_train_without_torch(tmp_path):
    site = _site_packages_without_torch(tmp_path / "site")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=f"{ROOT}{os.pathsep}{site}")
    config = ROOT / "experiments" / "smollm2_arithmetic_steering.yaml"
    proc = subprocess.run(
        [sys.executable, "-S", "-c", SCRIPT, str(tmp_path / "run"), str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] in (0, None) and not result["torch_loaded"]
    assert result["plain"] and result["steered"] and result["plain"] != result["steered"]
    assert any((tmp_path / "run").rglob("*.npy")), "the run exported no steering vectors"
