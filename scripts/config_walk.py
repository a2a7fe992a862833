"""Which files read the run config during a 2-step toy RL run started from `jaxsteer.train.train`.

Every attribute read of the root `TrainConfig` (`--sections`: of its sections too) is attributed to
the jaxsteer file of the reading frame; prints the distinct files, the visits (runs of consecutive
reads in one file) and the returns to a file already left. Fewer files holding the whole config
means the learners receive the sections they read (issue 19).

    python scripts/config_walk.py [--sections]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import train_toy as T  # noqa: E402

import jaxsteer  # noqa: E402
from jaxsteer.train import config as C  # noqa: E402
from jaxsteer.train import train  # noqa: E402
from jaxsteer.train.trainable import TrainableConfig  # noqa: E402

ROOT = os.path.dirname(jaxsteer.__file__)


def watch(classes: list[type], trail: list[str]) -> None:
    """Record the reading file of every attribute read of instances of `classes`."""
    for cls in classes:
        original = cls.__getattribute__

        def read(self, name, original=original):
            filename = sys._getframe(1).f_code.co_filename
            if filename.startswith(ROOT) and not name.startswith("__"):
                rel = os.path.relpath(filename, ROOT)
                if rel not in ("train/config.py", "config.py") and (not trail or trail[-1] != rel):
                    trail.append(rel)
            return original(self, name)

        cls.__getattribute__ = read


def main() -> None:
    trail: list[str] = []
    classes = [C.TrainConfig]
    if "--sections" in sys.argv:
        classes += [c for c in vars(C).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
        classes += [TrainableConfig]
    watch(sorted(set(classes), key=lambda c: c.__name__), trail)
    with tempfile.TemporaryDirectory() as out:
        train(C.config_from_dict(T.config_dict(out, steps=2)))
    files = sorted(set(trail))
    print(
        json.dumps(
            {
                "files": len(files),
                "visits": len(trail),
                "returns": len(trail) - len(files),
                "by_file": {f: trail.count(f) for f in files},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
