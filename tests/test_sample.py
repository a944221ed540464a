import json

import msgpack
import pytest

from tests.helpers import doc_sample, image_bytes, sft_sample
from vlcorpus.sample import ContractError, Sample, is_key, make_key


def test_key_is_deterministic_dot_free_and_in_contract_form():
    k = make_key("arxiv", "2403.05525", 3)
    assert k == make_key("arxiv", "2403.05525", 3)
    assert k != make_key("arxiv", "2403.05525", 4)
    assert k.startswith("arxiv-") and k.endswith("-00003") and "." not in k
    assert is_key(k)
    assert len(k.split("-")[1]) == 16


def test_roundtrip_through_wds_members():
    s = sft_sample()
    members = s.to_wds()
    assert set(members) == {"__key__", "sample.mp"}
    d = msgpack.unpackb(members["sample.mp"])
    assert d["schema"] == "vlcorpus/2" and json.loads(d["taxonomy"])[0] == "Recognition"
    assert [seg["bytes"] for seg in d["segments"] if seg["image"]] == [s.images["0.png"]]
    back = Sample.from_wds(members)
    assert back == s


def test_every_sample_has_the_same_fields_and_types_on_disk():
    """What lets `datasets` and Ray Data infer one schema from a few rows: text-only, SFT and multi-image samples
    alike have the same keys, each of one type, and no empty list."""
    text = doc_sample()
    text.category, text.segments, text.images = "text", [{"text": "words"}], {}
    shapes = []
    for s in (doc_sample(), sft_sample(), text):
        d = msgpack.unpackb(s.to_wds()["sample.mp"])
        shapes.append({k: type(v).__name__ for k, v in d.items()})
        assert d["segments"] and all({k: type(v).__name__ for k, v in seg.items()} == {
            "role": "str", "text": "str", "image": "str", "bytes": "bytes"} for seg in d["segments"])
        assert isinstance(d["meta"], str) and json.loads(d["meta"]) == s.meta
    assert shapes[0] == shapes[1] == shapes[2]


def test_vlcorpus_1_members_still_read():
    s = sft_sample()
    v1 = {"__key__": s.key, "0.png": s.images["0.png"], "json": json.dumps({
        "schema": "vlcorpus/1", "category": s.category, "source": s.source, "doc": s.doc, "part": s.part,
        "origin": s.origin, "segments": s.segments, "taxonomy": s.taxonomy, "meta": s.meta}).encode()}
    assert Sample.from_wds(v1) == s


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(category="photos"), "category"),
        (dict(source="ar.xiv"), "source"),
        (dict(part=-1), "part"),
        (dict(doc=""), "doc"),
        (dict(segments=[]), "segments"),
        (dict(segments=[{"text": "a", "image": "0.jpg"}]), "segments[0]"),
        (dict(segments=[{"image": "1.jpg"}, {"text": "x"}]), "segments[0].image"),
        (dict(segments=[{"image": "0.jpg", "role": "user"}, {"text": "x"}]), "roles"),
        (dict(segments=[{"image": "0.jpg"}, {"text": "x", "role": "bot"}]), "segments[1].role"),
        (dict(images={"0.jpg": image_bytes("PNG")}), "images['0.jpg']"),
        (dict(images={"0.jpg": image_bytes(), "1.jpg": image_bytes()}), "images"),
        (dict(meta={"x": object()}), "meta"),
        (dict(taxonomy=[]), "taxonomy"),
    ],
)
def test_off_contract_samples_are_refused_naming_the_field(change, field):
    s = doc_sample()
    for k, v in change.items():
        setattr(s, k, v)
    with pytest.raises(ContractError) as e:
        s.validate()
    assert field in str(e.value)


def test_sft_needs_roles_and_taxonomy():
    s = sft_sample()
    s.taxonomy = None
    with pytest.raises(ContractError, match="taxonomy"):
        s.validate()
    s = sft_sample()
    s.segments = [{"image": "0.png"}, {"text": "hi"}]
    with pytest.raises(ContractError, match="role"):
        s.validate()


def test_text_only_category_rejects_images():
    s = doc_sample()
    s.category = "text"
    with pytest.raises(ContractError, match="text-only"):
        s.validate()


def test_from_wds_rejects_key_mismatch_and_bad_schema():
    members = doc_sample().to_wds()
    with pytest.raises(ContractError, match="__key__"):
        Sample.from_wds({**members, "__key__": "arxiv-0000000000000000-00000"})
    d = msgpack.unpackb(members["sample.mp"])
    d["schema"] = "other/2"
    with pytest.raises(ContractError, match="schema"):
        Sample.from_wds({**members, "sample.mp": msgpack.packb(d)})
    with pytest.raises(ContractError, match="sample.mp"):
        Sample.from_wds({**members, "sample.mp": b"\x93 not a map"})
