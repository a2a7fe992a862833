"""Executable documentation (issue 21): every ```python block and every `jaxsteer ...` command line
in README.md, docs/*.md and docs/tutorials/*.py runs, so the docs cannot drift from the code.

Each document is one test. Its Python blocks run in order in one namespace (a later block may use
an earlier block's names), its `jaxsteer` commands run in-process through `jaxsteer.cli.main`,
all in a scratch directory (with `experiments/` linked in), and one loaded default model is shared
by every document (`jaxsteer.load` is memoised for the session). A failure names the document,
the block's line and the error.

Mark a block with an HTML comment on the line before its fence (the markers are invisible on
GitHub):

    <!-- docs-test: skip: needs a GPU -->      never run here (network, GPU, files we do not ship)
    <!-- docs-test: slow -->                   long-running: only with --docs-slow (or JAXSTEER_DOCS_SLOW=1)
    <!-- docs-test: slow; append: steps=2 eval.n=8; sub: n=200 => n=8 -->
                                               the slow run shortens it: `append` adds overrides to
                                               every `jaxsteer train|eval|sae ...` line, `sub` replaces
                                               text (several `sub:` allowed)

A block that sets up state later blocks need must not be `skip`ped. Non-Python blocks (yaml,
output listings) are ignored; in bash blocks only lines starting with `jaxsteer ` run (a
trailing `# comment` is dropped). `python -m pytest tests/integration/test_docs.py --docs-slow -k README`
runs one document with its long blocks.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import time
import traceback
from pathlib import Path

import pytest

import tests

ROOT = Path(tests.ROOT)
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "tutorials").glob("*.py"))]
FENCE = re.compile(r"^```(\w*)\s*$")
MARKER = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
SHELL = ("bash", "sh", "shell", "console")


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the fence (or of the tutorial cell)
    kind: str  # "python" or "commands"
    text: str
    skip: str | None = None  # reason
    slow: bool = False
    append: tuple[str, ...] = ()
    subs: tuple[tuple[str, str], ...] = ()

    def shortened(self) -> str:
        text = self.text
        for a, b in self.subs:
            if a not in text:
                raise AssertionError(f"{self.where}: marker sub {a!r} does not occur in the block")
            text = text.replace(a, b)
        return text

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _parse_marker(text: str) -> dict:
    out: dict = {"subs": []}
    for part in (p.strip() for p in text.split(";")):
        if part.startswith("skip"):
            out["skip"] = part.partition(":")[2].strip() or "marked skip"
        elif part == "slow":
            out["slow"] = True
        elif part.startswith("append:"):
            out["append"] = tuple(shlex.split(part.partition(":")[2]))
        elif part.startswith("sub:"):
            a, sep, b = part.partition(":")[2].partition("=>")
            if not sep:
                raise ValueError(f"docs-test marker {text!r}: sub needs 'old => new'")
            out["subs"].append((a.strip(), b.strip()))
        elif part:
            raise ValueError(f"unknown docs-test marker {part!r} in {text!r}")
    out["subs"] = tuple(out["subs"])
    return out


def _commands(text: str) -> str:
    lines = []
    for raw in text.replace("\\\n", " ").splitlines():  # join backslash-continued lines
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if line.startswith("jaxsteer "):
            lines.append(re.sub(r"\s+#.*$", "", line))
    return "\n".join(lines)


def collect_markdown(path: Path) -> list[Block]:
    """The runnable blocks of one markdown file, with their markers."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    marker: dict | None = None
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        if m:
            marker = _parse_marker(m.group(1))
            i += 1
            continue
        f = FENCE.match(lines[i].strip())
        if f:
            lang, start = f.group(1), i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            body = "\n".join(lines[i + 1 : j])
            kind = "python" if lang in ("python", "py") else "commands" if lang in SHELL else None
            if kind == "commands":
                body = _commands(body)
            if kind and body.strip():
                blocks.append(Block(path, start + 1, kind, body, **(marker or {})))
            marker = None
            i = j + 1
            continue
        if lines[i].strip():
            marker = None  # a marker applies to the next fence only
        i += 1
    return blocks


def collect_tutorial(path: Path) -> list[Block]:
    """A jupytext percent-format notebook: each `# %%` code cell is a Python block (markdown cells skipped)."""
    blocks, cell, start, is_code = [], [], 1, True
    marker: dict = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines() + ["# %%"], 1):
        if line.startswith("# %%"):
            text = "\n".join(cell).strip()
            if is_code and text and not text.startswith("# ---"):
                blocks.append(Block(path, start, "python", text, **marker))
            cell, start, is_code = [], n, "[markdown]" not in line
            m = re.search(r"docs-test:\s*(.*)$", line)
            marker = _parse_marker(m.group(1)) if m else {}
            continue
        cell.append(line)
    return blocks


def collect(path: Path) -> list[Block]:
    return collect_tutorial(path) if path.suffix == ".py" else collect_markdown(path)


def _is_slow_run(config) -> bool:
    return bool(config.getoption("--docs-slow", default=False)) or os.environ.get("JAXSTEER_DOCS_SLOW") == "1"


@pytest.fixture(scope="module")
def shared_load():
    """`jaxsteer.load` memoised on its arguments while this module runs: every document shares one
    loaded default model (restored afterwards, so other test modules see the real `load`)."""
    import jaxsteer
    import jaxsteer.models.loading as loading

    original, memo = loading.load, {}

    def load(*args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in memo:
            memo[key] = original(*args, **kwargs)
        return memo[key]

    loading.load = jaxsteer.load = load
    yield
    loading.load = jaxsteer.load = original


def _run_commands(block: Block, text: str, slow: bool) -> None:
    from jaxsteer import cli

    for line in text.splitlines():
        argv = shlex.split(line)[1:]
        if slow and block.append and argv and argv[0] in ("train", "eval", "sae"):
            argv += list(block.append)
        try:
            cli.main(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                raise AssertionError(f"{block.where}: `{line}` exited with {e.code!r}") from None


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_doc_blocks_run(path, shared_load, tmp_path, monkeypatch, request):
    blocks = collect(path)
    if not blocks:
        pytest.skip("no runnable blocks")
    slow_run = _is_slow_run(request.config)
    for name in ("experiments", "scripts", "benchmarks", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    skipped, timings = [], []
    for block in blocks:
        if block.skip or (block.slow and not slow_run):
            skipped.append(f"{block.where} ({block.skip or 'slow'})")
            continue
        text = block.shortened() if block.slow else block.text
        t0 = time.perf_counter()
        try:
            if block.kind == "python":
                exec(compile(text, f"{block.where}", "exec"), namespace)
            else:
                _run_commands(block, text, block.slow)
        except AssertionError:
            raise
        except BaseException as e:  # noqa: BLE001 - report any failure with the block's location
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
            raise AssertionError(f"{block.where}: {type(e).__name__}: {e}\n{tb}") from None
        timings.append(f"{block.where} {time.perf_counter() - t0:.1f}s")
    print(f"{path.name}: " + ", ".join(timings))
    if skipped:
        print(f"{path.name}: skipped {len(skipped)} block(s): " + ", ".join(skipped))


def test_collector_reads_markers(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "\n".join(
            [
                "text",
                "```python",
                "a = 1",
                "```",
                "<!-- docs-test: slow; append: steps=2; sub: a = 2 => a = 3 -->",
                "```python",
                "a = 2",
                "```",
                "<!-- docs-test: skip: needs a GPU -->",
                "",
                "```bash",
                "jaxsteer info x   # note",
                "pip install y",
                "```",
                "```yaml",
                "k: v",
                "```",
                "```",
                "plain",
                "```",
            ]
        )
    )
    blocks = collect_markdown(doc)
    assert [(b.kind, b.line, b.text, b.slow, b.skip) for b in blocks] == [
        ("python", 2, "a = 1", False, None),
        ("python", 6, "a = 2", True, None),
        ("commands", 11, "jaxsteer info x", False, "needs a GPU"),
    ]
    assert blocks[1].append == ("steps=2",) and blocks[1].shortened() == "a = 3"
    nb = tmp_path / "t.py"
    nb.write_text("# ---\n# jupyter: x\n# ---\n\n# %% [markdown]\n# hi\n\n# %%\nx = 1\n\n# %% docs-test: slow\ny = 2\n")
    assert [(b.text, b.slow) for b in collect_tutorial(nb)] == [("x = 1", False), ("y = 2", True)]
