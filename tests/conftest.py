"""Shared fixtures: one small embedded Ray for the whole session (CI has 2 cores)."""

from __future__ import annotations

import http.server
import os
import threading

import pytest

from tests.helpers import start_test_ray

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray workers and spawned renderer processes inherit the environment, so test-only renderers import there too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs and a small object store; shut down at the end of the session."""
    import ray

    if not ray.is_initialized():
        start_test_ray()
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def server():
    """A local HTTP server that counts the requests that reach it: renderers must never reach it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"body{background:red}")

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()
