"""The SAE run config (jaxsteer.train.sae.config): unknown keys and bad values are errors; the
shipped corpora's old module path migrates on load."""

import pytest

from jaxsteer.train.sae.config import load_run_config


def test_config_is_strict(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        load_run_config(None, ["sae.kidn=topk"])
    with pytest.raises(ValueError, match="layer: expected an integer"):
        load_run_config(None, ["layer=abc"])
    cfg = load_run_config(None, ["optimizer.lr=1e-3", "sae.kind=kron"])
    assert cfg.optimizer.lr == 1e-3 and cfg.sae.kind == "kron"


def test_the_corpora_old_module_migrates(tmp_path):
    """Configs written before SAE training moved name `py:jaxsteer.sae.corpora:...`; they load with
    the corpora's new module, and the text loads."""
    from jaxsteer.train.sae.activations import read_texts

    path = tmp_path / "old.yaml"
    path.write_text(
        "text: py:jaxsteer.sae.corpora:general_text\neval: {text: 'py:jaxsteer.sae.corpora:arithmetic_text'}\n"
    )
    cfg = load_run_config(str(path))
    assert cfg.text == "py:jaxsteer.train.sae.corpora:general_text"
    assert cfg.eval.text == "py:jaxsteer.train.sae.corpora:arithmetic_text"
    assert len(read_texts(cfg.eval.text)) == 4000 and len(read_texts(cfg.text)) > 50
