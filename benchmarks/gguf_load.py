"""Loading the default GGUF model: jaxsteer's torch-free path vs transformers' GGUF integration.

    python -m benchmarks.gguf_load [--rounds 3]

Times, side by side in one process and round-robin (so drift of a shared machine hits both):
  - metadata: jaxsteer's `GGUFFile` header parse + `gguf_config`, vs
    `transformers.AutoConfig.from_pretrained(..., gguf_file=...)` (which needs torch);
  - tokenizer: `gguf_tokenizer` vs `transformers.AutoTokenizer.from_pretrained(..., gguf_file=...)`;
  - the whole `jaxsteer.load("smollm2-135m-instruct")` (dequantise and assemble included; no peer:
    transformers' GGUF model load builds a torch model, a different product).
Prints median wall and CPU seconds and the ratio peer / jaxsteer (> 1: jaxsteer is faster).
Parsing is byte-bound Python, not matmuls, so no MFU figure applies here.
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import interleaved_times, log, thread_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import transformers

    import jaxsteer
    from jaxsteer.models.gguf_file import GGUFFile, gguf_config, gguf_tokenizer
    from jaxsteer.models.loading import default_model_path

    path = default_model_path()
    fns = {
        "jaxsteer metadata+config": lambda: gguf_config(GGUFFile(path)),
        "transformers config": lambda: transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name),
        "jaxsteer tokenizer": lambda: gguf_tokenizer(GGUFFile(path)),
        "transformers tokenizer": lambda: transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name),
        "jaxsteer.load (model + tokenizer)": lambda: jaxsteer.load("smollm2-135m-instruct"),
    }
    log(f"{path.name}: {args.rounds} interleaved rounds")
    print(
        f"peer: transformers {transformers.__version__} AutoConfig / AutoTokenizer .from_pretrained(gguf_file=...), "
        f"its only GGUF path; threads: {thread_policy()}"
    )
    wall, cpu = interleaved_times(
        fns, args.rounds, on_result=lambda k, w, c: log(f"{k}: {w:.2f} s wall, {c:.2f} s CPU")
    )
    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}
    print(f"{'what':36s} {'wall s':>8s} {'CPU s':>8s}")
    for k, (w, c) in med.items():
        print(f"{k:36s} {w:8.2f} {c:8.2f}")
    for ours, peer in (
        ("jaxsteer metadata+config", "transformers config"),
        ("jaxsteer tokenizer", "transformers tokenizer"),
    ):
        print(f"{peer} / {ours}: {med[peer][0] / med[ours][0]:.1f}x wall, {med[peer][1] / med[ours][1]:.1f}x CPU")


if __name__ == "__main__":
    main()
