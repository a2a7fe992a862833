"""The command line explains itself (issue 21): every option of every command has help text, the
top-level description names every command, and training ends with what to run next."""

from __future__ import annotations

import argparse

from jaxsteer import cli


def _parsers():
    top, out = cli.build_parser(), {}

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    out[f"{name} {sub_name}".strip()] = sub
                    walk(sub, f"{name} {sub_name}".strip())

    walk(top, "")
    return top, out


def test_every_option_has_help_and_every_command_is_described():
    top, commands = _parsers()
    missing = [
        f"jaxsteer {name} {'/'.join(a.option_strings) or a.dest}"
        for name, p in commands.items()
        for a in p._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help
    ]
    assert not missing, missing
    top_level = [n for n in commands if " " not in n]
    assert {"info", "generate", "demo", "train", "eval", "plan", "lens", "patch", "sae"} <= set(top_level)
    for name in top_level:
        assert f"\n  {name} " in top.description, name


def test_next_steps_name_the_commands_to_run():
    text = cli.next_steps("runs/x", has_vectors=True)
    assert "jaxsteer eval runs/x" in text and "jaxsteer generate --run runs/x" in text
    assert "jaxsteer.load_run('runs/x')" in text and "jaxsteer lens --vectors runs/x/steering_vectors.npy" in text


def test_next_steps_prompt_is_one_of_the_runs_own(tmp_path):
    import json
    import shlex

    from jaxsteer.cli.train import first_prompt
    from jaxsteer.train import load_config
    from jaxsteer.train.data import load_dataset

    data = tmp_path / "reviews.jsonl"
    rows = [{"prompt": 'Review: it\'s "fine". Sentiment?', "answer": "positive"}, {"prompt": "b", "answer": "c"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.train={data}", f"data.eval={data}"])
    assert first_prompt(cfg) == rows[0]["prompt"]
    text = cli.next_steps("runs/x", has_vectors=False, prompt=first_prompt(cfg))
    line = next(x for x in text.splitlines() if "generate --run" in x)
    assert shlex.split(line)[shlex.split(line).index("--prompt") + 1] == rows[0]["prompt"]  # quoted for the shell
    arithmetic = load_config(None, [])
    assert first_prompt(arithmetic) == load_dataset(arithmetic.data.eval)[0].prompt
    missing = tmp_path / "missing.jsonl"
    assert first_prompt(load_config(None, [f"data.eval={missing}", f"data.train={missing}"], warn=False)) is None


def test_mfu_above_one_is_flagged():
    import warnings

    from benchmarks.common import mfu

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mfu(50.0, 1.0, 100.0) == 0.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert mfu(150.0, 1.0, 100.0) == 1.5
    assert any("reference matmul ran slower than expected" in str(w.message) for w in caught)
