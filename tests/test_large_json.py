"""A large JSON file: a COCO captions file of ~200 MB is discovered streaming, with memory that does not grow with
the file (measured in a fresh process), and every caption arrives joined with its image. The 2 GB figure is
`benchmarks/importers.py --coco-json-gb 2` (benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from renderers.records.reader import read_records
from tests.dataset_layouts import write_coco_large
from vlcorpus.document import DocInput

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DISCOVER = """
import json, resource, sys
from pathlib import Path
from renderers.records.discovery import record_inputs
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
docs = record_inputs(Path(sys.argv[1]), Path(sys.argv[2]), ('.json',), 2000)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"docs": [[d.doc, d.origin, d.path, d.related] for d in docs], "grew_kb": after - before}))
"""


def test_a_large_coco_json_is_read_streaming_with_bounded_memory(tmp_path):
    exp = write_coco_large(tmp_path / "coco", target_bytes=256 * 1024**2)
    size = (exp.input / "annotations/captions_train2017.json").stat().st_size
    res = subprocess.run([sys.executable, "-c", DISCOVER, str(exp.input), str(tmp_path / "staging")],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    got = json.loads(res.stdout)
    grew = got["grew_kb"] * 1024
    assert grew < 64 * 1024**2 < size / 3, f"discovery grew by {grew:,} bytes reading a {size:,}-byte file"
    docs = [DocInput(*d) for d in got["docs"]]
    assert len(docs) == -(-exp.records // 2000) and {d.related["layout"] for d in docs} == {"coco"}
    for d in (docs[0], docs[-1]):
        stats: Counter = Counter()
        images = {rec["image"] for _, rec in read_records(d, stats)}
        assert images <= {"000000000001.jpg", "000000000002.jpg", "000000000003.jpg"}
        assert stats["records"] == (2000 if d is docs[0] else exp.records - 2000 * (len(docs) - 1))
        assert stats["unknown_image_id"] == 0
