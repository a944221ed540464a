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
    assert summary["categories"]["doc_ocr"] == {"docs": 8, "heldout_docs": 2}
    sides = {side: {s.doc for s in read_samples(shard_paths(tmp_path / "split" / side / "doc_ocr"))}
             for side in ("train", "heldout")}
    assert not sides["train"] & sides["heldout"]
    held_books = {document_of(d) for d in sides["heldout"]}
    assert len(held_books) == 2 and not held_books & {document_of(d) for d in sides["train"]}
    assert all(set(books[b]) <= sides["heldout"] for b in held_books)  # every part of a held-out book is held out
