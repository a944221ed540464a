"""The README's ways of reading a corpus or a mixture (plain webdataset, Ray Data), run as written on a corpus whose
samples differ in every way a real one does: no image, several, JPEG and PNG, different sizes and modes."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from PIL import Image

from mixer.config import load_mixture
from mixer.mix import run_mix
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, write_index

ROOT = Path(__file__).parents[1]
README_TARS = "out/demo/mix/stage2/*/*.tar"


def encoded(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    img = Image.new(mode, size, seed % 256 if mode == "L" else ((seed * 37) % 256, 90, 200, 255)[: len(mode)])
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def build_corpus(root: Path) -> dict[str, list[tuple[int, int]]]:
    """Writes the corpus; returns each sample's image sizes by key, in segment order."""
    samples = [Sample("caption", "rd", f"cap{i}", 0, "caption.jsonl", [{"image": "0.jpg"}, {"text": f"a caption {i}"}],
                      {"0.jpg": encoded("RGB", (40 + 37 * i, 30 + 11 * i), "JPEG", i)}) for i in range(4)]
    samples += [Sample("doc_ocr", "rd", f"page{i}", 0, "paper.pdf", [{"image": "0.png"}, {"text": f"page text {i}"}],
                       {"0.png": encoded(mode, (300 + i, 400 - i), "PNG", i)}) for i, mode in enumerate(["L", "RGB", "RGBA", "L"])]
    samples += [Sample("interleaved", "rd", f"doc{i}", 0, "docs.jsonl",
                       [{"text": "before"}, {"image": "0.jpg"}, {"text": "between"}, {"image": "1.png"}],
                       {"0.jpg": encoded("RGB", (64, 48 + i), "JPEG", i), "1.png": encoded("L", (20 + i, 90), "PNG", i)})
                for i in range(4)]
    samples += [Sample("text", "rd", f"txt{i}", 0, "t.txt", [{"text": f"only words {i}"}], {}) for i in range(4)]
    for category in ("caption", "doc_ocr", "interleaved", "text"):
        with ShardWriter(root / category, "rd-test", max_samples=2) as w:
            for s in samples:
                if s.category == category:
                    w.write(s)
        write_index(root / category)
    sizes = {}
    for s in samples:
        names = [seg["image"] for seg in s.segments if "image" in seg]
        sizes[s.key] = [Image.open(io.BytesIO(s.images[n])).size for n in names]
    return sizes


def readme_recipes() -> list[str]:
    """The python blocks of the README's section on reading, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Reading a corpus or a mixture", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("readers")
    sizes = build_corpus(root / "corpus")
    mixture = root / "mix.yaml"
    mixture.write_text(yaml.safe_dump({"stage": "stage2", "unit": "samples", "budget": "scarcest", "categories": {
        c: {"ratio": 0.25} for c in ("caption", "doc_ocr", "interleaved", "text")}}))
    run_mix([root / "corpus"], load_mixture(str(mixture)), root / "mix", local=True)
    return root, sizes


def run_readme(tars_glob: str, ray_local) -> dict:
    blocks = readme_recipes()
    assert len(blocks) == 3 and README_TARS in blocks[0]
    ns: dict = {}
    for block in blocks:
        exec(compile(block.replace(README_TARS, tars_glob), "README.md", "exec"), ns)
    return ns


@pytest.mark.parametrize("folder", ["corpus", "mix/stage2"])
def test_the_readme_recipes_read_every_sample(corpus, folder, ray_local):
    root, sizes = corpus
    tars_glob = f"{root}/{folder}/*/*.tar"
    ns = run_readme(tars_glob, ray_local)
    assert len(ns["tars"]) >= 4

    # plain webdataset, as the README's loop reads it
    seen = {}
    for sample in wds.WebDataset(ns["tars"], shardshuffle=False).decode("pil"):
        meta = sample["json"]
        pictures = [sample[s["image"]] for s in meta["segments"] if "image" in s]
        seen[sample["__key__"]] = [p.size for p in pictures]
    assert seen == sizes

    # Ray Data with the README's decoder: one table, every sample, images in segment order
    rows = ns["ds"].take_all()
    got = {r["__key__"]: [Image.open(io.BytesIO(b)).size for b in r["images"]] for r in rows}
    assert got == sizes
    cats = {json.loads(r["json"])["category"] for r in rows}
    assert cats == {"caption", "doc_ocr", "interleaved", "text"}
    if folder.startswith("mix"):
        assert all(json.loads(r["json"])["meta"]["mix"]["stage"] == "stage2" for r in rows)
    assert all(isinstance(p, Image.Image) for p in ns["pictures"])

