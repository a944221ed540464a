"""The one place every producer's samples are finalised: each sample gets `meta.language` and
`meta.language_score` (identified from its text) and `meta.provenance` (`vlcorpus.curate.provenance`). It runs in
the driver's worker on every document's samples before they are written, so no renderer does it itself."""

from __future__ import annotations

from vlcorpus.curate.language import identify
from vlcorpus.curate.provenance import provenance
from vlcorpus.document import DocInput
from vlcorpus.sample import Sample


def document_provenance(doc: DocInput, root: str) -> dict:
    """The document's provenance; an unreadable source keeps its path with the hash and licence unknown."""
    try:
        return provenance(doc.origin, doc.path, root)
    except OSError:
        return {"path": doc.origin, "sha256": None, "license": None, "license_spdx": None, "license_file": None}


def annotate(samples: list[Sample], doc: DocInput, root: str) -> None:
    prov = document_provenance(doc, root) if samples else None
    for s in samples:
        s.meta["language"], s.meta["language_score"] = identify(s.text)
        s.meta["provenance"] = dict(prov)
