"""Small real fixtures shared by tests: JPEG/PNG bytes made with PIL and samples of every shape."""

from __future__ import annotations

import io

from PIL import Image

from vlcorpus.sample import MEMBER, SCHEMA, Sample


def image_bytes(fmt: str = "JPEG", size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def doc_sample(doc: str = "paper-1", part: int = 0, text: str = "Page text with $x^2$.") -> Sample:
    return Sample(
        category="doc_ocr", source="arxiv", doc=doc, part=part, origin=f"{doc}.pdf",
        segments=[{"image": "0.jpg"}, {"text": text}], images={"0.jpg": image_bytes()}, meta={"page": part},
    )


def sft_sample(doc: str = "conv-1") -> Sample:
    return Sample(
        category="sft_taxonomy", source="sft", doc=doc, part=0, origin="convs.json",
        segments=[
            {"role": "user", "image": "0.png"},
            {"role": "user", "text": "What is written here?"},
            {"role": "assistant", "text": "Hello."},
        ],
        images={"0.png": image_bytes("PNG")},
        taxonomy=["Recognition", "OCR and Transcription", "Printed Text Transcription"],
    )


def sample_view(row: dict, pil: bool = False) -> dict:
    """A sample as the webdataset library reads it (decoded or not), laid out as the tests look at it: `json` holds
    the sample as one JSON object (segments, taxonomy and meta as the producer made them), each image is under its
    name (a PIL image with `pil`)."""
    s = Sample.from_wds({"__key__": row["__key__"], MEMBER: row[MEMBER]})
    d = {"schema": SCHEMA, "category": s.category, "source": s.source, "doc": s.doc, "part": s.part,
         "origin": s.origin, "segments": s.segments, "meta": s.meta}
    if s.taxonomy is not None:
        d["taxonomy"] = s.taxonomy
    return {"__key__": row["__key__"], "json": d,
            **{n: Image.open(io.BytesIO(b)) if pil else b for n, b in s.images.items()}}


def start_test_ray() -> None:
    """The suite's local Ray: 2 CPUs (CI has 2 cores) and a small object store."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False,
             logging_level="WARNING")
