"""Inputs named one by one: a command given a file (not a folder) reads that file, bounded by its folder."""

from __future__ import annotations

from vlcorpus.inputs import discover, gate, input_root


def test_a_file_given_as_the_input_is_the_one_input(tmp_path):
    books = tmp_path / "books"
    books.mkdir()
    (books / "b.epub").write_bytes(b"another book beside it")
    book = books / "a.epub"
    book.write_bytes(b"the book")
    (doc,) = discover(book, (".epub",))
    assert (doc.doc, doc.origin, doc.path) == ("a.epub", "a.epub", str(book.resolve()))
    assert discover(book, (".pdf",)) == []  # a file in no format the command reads gives no input
    safe, refused = gate([doc], [input_root(book)], "run")
    assert safe == [doc] and refused == []
    assert [d.doc for d in discover(books, (".epub",))] == ["a.epub", "b.epub"]  # the folder: both, same ids
