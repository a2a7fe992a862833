"""Run parts of the reproduction report (issue 14), then assemble docs/reproduction.md.

    .venv/bin/python experiments/reproduction/run.py                      # every part (~8 CPU-hours)
    .venv/bin/python experiments/reproduction/run.py --parts table1,per_layer
    .venv/bin/python experiments/reproduction/run.py --list
    .venv/bin/python experiments/reproduction/run.py --quick              # smoke scale, into runs/reproduction_quick/
    .venv/bin/python experiments/reproduction/run.py --report-only        # re-assemble the markdown
    .venv/bin/python experiments/reproduction/run.py --collect-only       # parts from the finished runs only

Two cores: split the convergence part by rows (`--methods steering,lora` in one process, the rest in
another), or start the efficiency or per_layer part twice (`taskset -c 0 ... &` and `taskset -c 1 ...`):
each process trains the independent runs the other is not training, then both wait for and reuse all
of them (Context.share_runs). Finished runs under runs/reproduction/ are reused by every later call.

Each part writes <out_dir>/<part>.json (its results + wall_s, cpu_s, the command) and its PNGs; the
protocol is in common.py's docstring. A part whose module is missing is skipped with a note.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import common  # noqa: E402
import report  # noqa: E402


def load_part(name: str):
    """The part's module, or None when it does not exist (yet)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise


def command_of(part: str, quick: bool) -> str:
    """The command line that regenerates one part (trains what is missing, reuses what finished)."""
    return f".venv/bin/python experiments/reproduction/run.py --parts {part}" + (" --quick" if quick else "")


def run_part(ctx: common.Context, name: str) -> dict | None:
    """Run one part, time it (wall and process CPU) and write <out_dir>/<name>.json."""
    module = load_part(name)
    if module is None:
        ctx.log(f"{name}: module experiments/reproduction/{name}.py not found, skipped")
        return None
    ctx.log(f"{name}: start")
    w0, c0, load0 = time.perf_counter(), time.process_time(), common.machine()["loadavg"]
    ctx.used, git0 = [], common.git_state()
    result = module.run(ctx)
    made = [u for u in ctx.used if not u.get("missing")]
    result.update(
        training_runs=ctx.used,
        runs_wall_s=sum(u["wall_s"] for u in made),
        runs_cpu_s=sum(u["cpu_s"] for u in made),
        missing_runs=[u["name"] for u in ctx.used if u.get("missing")],
        collect_only=ctx.collect_only,
        wall_s=time.perf_counter() - w0,
        cpu_s=time.process_time() - c0,
        command=command_of(name, ctx.quick),
        quick=ctx.quick,
        finished=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        loadavg_start=load0,
        loadavg_end=common.machine()["loadavg"],
        git=git0,
    )
    (ctx.out_dir / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    ctx.log(f"{name}: done in {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} s CPU")
    return result


def main(argv=None) -> int:
    """Parse the arguments, run the parts asked for (a failing part does not stop the others), write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(common.PARTS), help="comma-separated parts (default: all)")
    p.add_argument("--list", action="store_true", help="list the parts and whether their modules exist")
    p.add_argument("--quick", action="store_true", help="smoke scale (few steps, n=20), into runs/reproduction_quick/")
    p.add_argument("--report-only", action="store_true", help="only assemble the markdown from the JSON present")
    p.add_argument(
        "--collect-only",
        action="store_true",
        help="train nothing: build each part from the runs that finished (others are listed as missing)",
    )
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated convergence rows to run alone (default: all); lets two processes split the part, "
        "a later run without it reuses their runs and writes the whole table",
    )
    args = p.parse_args(argv)
    if args.list:
        for name in common.PARTS:
            print(f"{name:18s} {'ok' if load_part(name) is not None else 'module missing'}")
        return 0
    methods = [s.strip() for s in args.methods.split(",") if s.strip()]
    ctx = common.Context(quick=args.quick, collect_only=args.collect_only, methods=methods)
    failed = []
    if not args.report_only:
        for name in [s.strip() for s in args.parts.split(",") if s.strip()]:
            if name not in common.PARTS:
                p.error(f"unknown part {name!r}; parts: {', '.join(common.PARTS)}")
            try:
                run_part(ctx, name)
            except Exception:  # one failing part must not lose the others' results
                traceback.print_exc()
                failed.append(name)
    path = report.write_report(ctx.out_dir, ctx.out_dir.parent / "reproduction.md")
    ctx.log(f"report: {path}" + (f"; failed parts: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
