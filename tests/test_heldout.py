"""The document-level held-out split: no document, not even a book rendered in parts, on both sides."""

from mixer.heldout import split_corpus
from vlcorpus.document import document_of, part_id
from vlcorpus.sample import Sample
from vlcorpus.shards import ShardWriter, read_samples, shard_paths, write_index


def page(doc: str, part: int) -> Sample:
    return Sample(category="doc_ocr", source="epub", doc=doc, part=part, origin=document_of(doc),
                  segments=[{"text": f"page {part} of {doc}"}])


def test_parts_of_a_book_stay_on_one_side(tmp_path):
    corpus = tmp_path / "corpus"
    books = {f"book{b}.epub": [part_id(f"book{b}.epub", c) for c in (0, 12, 30)] for b in range(8)}
    with ShardWriter(corpus / "doc_ocr", "t", max_samples=7) as w:
        for parts in books.values():
            for doc in parts:
                for p in range(3):
                    w.write(page(doc, p))
    write_index(corpus / "doc_ocr")
    summary = split_corpus(corpus, tmp_path / "split", fraction=0.25)
    assert summary["categories"]["doc_ocr"] == {"docs": 8, "heldout_docs": 2, "samples": 72, "heldout_samples": 18,
                                                "split_within": []}
    sides = {side: {s.doc for s in read_samples(shard_paths(tmp_path / "split" / side / "doc_ocr"))}
             for side in ("train", "heldout")}
    assert not sides["train"] & sides["heldout"]
    held_books = {document_of(d) for d in sides["heldout"]}
    assert len(held_books) == 2 and not held_books & {document_of(d) for d in sides["train"]}
    assert all(set(books[b]) <= sides["heldout"] for b in held_books)  # every part of a held-out book is held out


def write_pages(corpus, pages: dict[str, int]) -> None:
    with ShardWriter(corpus / "doc_ocr", "t") as w:
        for doc, n in pages.items():
            for p in range(n):
                w.write(page(doc, p))
    write_index(corpus / "doc_ocr")


def sides(split) -> dict[str, list[tuple[str, int]]]:
    return {side: sorted((s.doc, s.part) for s in read_samples(shard_paths(split / side / "doc_ocr")))
            for side in ("train", "heldout")}


def test_few_large_documents_hold_out_about_the_fraction_of_samples(tmp_path):
    """Books of 40 pages and 1: a whole book holds out 98% or 2% of the pages. The split holds out the small one and
    the last pages of the big one, 10% in all, and says so."""
    write_pages(tmp_path / "c", {"big.epub": 40, "small.epub": 1})
    summary = split_corpus(tmp_path / "c", tmp_path / "split", fraction=0.1)["categories"]["doc_ocr"]
    got = sides(tmp_path / "split")
    assert summary["heldout_samples"] == len(got["heldout"]) == 4 and len(got["train"]) == 37
    assert summary["split_within"] == ["big.epub"]
    assert got["heldout"] == [("big.epub", 37), ("big.epub", 38), ("big.epub", 39), ("small.epub", 0)]


def test_one_document_is_split_by_pages_and_a_single_sample_stays_in_training(tmp_path):
    write_pages(tmp_path / "c", {"only.pdf": 30})
    summary = split_corpus(tmp_path / "c", tmp_path / "split", fraction=0.2)["categories"]["doc_ocr"]
    assert (summary["heldout_samples"], summary["split_within"]) == (6, ["only.pdf"])
    write_pages(tmp_path / "one", {"only.pdf": 1})
    assert split_corpus(tmp_path / "one", tmp_path / "split1", fraction=0.5)["categories"]["doc_ocr"]["heldout_samples"] == 0


def test_whole_documents_when_they_fit(tmp_path):
    write_pages(tmp_path / "c", {f"paper{i}.pdf": 5 for i in range(10)})
    summary = split_corpus(tmp_path / "c", tmp_path / "split", fraction=0.2)["categories"]["doc_ocr"]
    assert (summary["heldout_docs"], summary["heldout_samples"], summary["split_within"]) == (2, 10, [])
    got = sides(tmp_path / "split")
    assert not {d for d, _ in got["train"]} & {d for d, _ in got["heldout"]}
