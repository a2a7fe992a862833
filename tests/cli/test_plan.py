"""`jaxsteer plan`'s flag parsers: `--mesh data=D,fsdp=F` and `--device-memory 16GiB`."""

from __future__ import annotations

import pytest

from jaxsteer.cli.plan import parse_bytes, parse_mesh
from jaxsteer.errors import InputError
from jaxsteer.train.plan import DEVICES


def test_small_parsers():
    assert parse_bytes("16GiB") == DEVICES["v5e"] and parse_bytes("80GB") == DEVICES["h100"]
    assert parse_mesh("data=8,fsdp=2") == (8, 2) and parse_mesh("fsdp=4") == (1, 4)
    with pytest.raises(InputError, match="--mesh: expected data=D,fsdp=F"):
        parse_mesh("tensor=2")
    with pytest.raises(InputError, match="cannot read a memory size from 'lots'"):
        parse_bytes("lots")
