"""The trainer on several ranks without Ray: real gloo process groups of 2 processes (torch.multiprocessing), the
trainer's own `open_stage`/`train_step`/`evaluate`, compared with one process doing the same work. These are the
paths only a cluster meets: ranks whose batches use different parameters, the evaluation split over ranks."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from tests.trainer_fixtures import stage
from trainer.config import RunConfig
from trainer.data import IGNORE, collate_rows
from trainer.synthetic import make_mixture, make_sample
from trainer.tokenizer import corpus_texts, train_tokenizer
from trainer.train import make_optimizer, open_stage, train_step


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    return make_mixture(tmp_path_factory.mktemp("mix"), samples_per_category=8, shard_samples=4, max_words=40)


@pytest.fixture(scope="module")
def tok_dir(mix, tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(corpus_texts(mix), 400, out)
    return out


def spawn(fn, world: int, tmp: Path, *args) -> None:
    """`fn(rank, world, *args)` in `world` fresh processes joined in one gloo group."""
    mp.start_processes(_join, args=(world, str(tmp / "pg"), fn, args), nprocs=world, start_method="spawn")


def _join(rank: int, world: int, store: str, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


# --- ranks whose micro-batches use different parameters -------------------------------------------------------------


def _micro_batches(st, n: int) -> list[dict]:
    """Micro-batch i: an image with its caption for i == 0, plain text otherwise."""
    rng = random.Random(4)
    samples = [make_sample("caption" if i == 0 else "text", i, rng, 30) for i in range(n)]
    return [collate_rows([[st.encoder(s)]], st.encoder.ids.pad) for s in samples]


def _step_grads(st, micro: list[dict], n_target: float) -> dict[str, torch.Tensor]:
    """The gradients `train_step` hands the optimizer (whole tensors, also under FSDP)."""
    grads: dict[str, torch.Tensor] = {}

    def record():
        for name, p in st.raw.named_parameters():
            if p.grad is not None:
                grads[name] = (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).clone()

    st.optimizer.step = record
    train_step(st, micro, n_target)
    return grads


def _targets(micro: list[dict]) -> float:
    return float(sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro))


def _run(tmp: Path, mix: Path, tok_dir: Path, **kw) -> RunConfig:
    return RunConfig(mix=str(mix), out=str(tmp / "run"), tokenizer=str(tok_dir), num_workers=0, seed=0, device="cpu",
                     **kw)


STAGE = dict(grad_clip=1e9, seq_len=128)  # no clipping: the gradients compared are the raw ones


def _rank_grads(rank: int, world: int, tmp: Path, mix: Path, tok_dir: Path) -> None:
    for wrapping in ("ddp", "fsdp"):
        st = open_stage(_run(tmp / f"r{rank}", mix, tok_dir, fsdp=wrapping == "fsdp"), stage("stage2", **STAGE), None)
        make_optimizer(st)
        every = _micro_batches(st, world)
        grads = _step_grads(st, [every[rank]], _targets(every))  # the image on rank 0 only
        if rank == 0:
            torch.save(grads, tmp / f"{wrapping}.pt")


@pytest.mark.slow
def test_an_image_on_one_rank_only_gives_the_one_process_gradients(mix, tok_dir, tmp_path):
    """Rank 0 holds an image, rank 1 only text: the towers' and adaptor's gradients exist on rank 0 alone. FSDP2
    aborted with a collective mismatch (the adaptor's reduce-scatter on one rank); now DDP and FSDP2 both give the
    gradients of one process doing both micro-batches."""
    spawn(_rank_grads, 2, tmp_path, tmp_path, mix, tok_dir)
    st = open_stage(_run(tmp_path / "one", mix, tok_dir), stage("stage2", **STAGE), None)
    make_optimizer(st)
    micro = _micro_batches(st, 2)
    one = _step_grads(st, micro, _targets(micro))
    assert any(n.startswith("model.aligner.") for n in one) and any(n.startswith("model.language_model.layers.") for n in one)
    for wrapping in ("ddp", "fsdp"):
        ranks = torch.load(tmp_path / f"{wrapping}.pt", weights_only=True)
        assert set(ranks) == set(one), wrapping
        for name, g in one.items():
            err = (ranks[name] - g).norm() / g.norm().clamp(min=1e-12)
            assert err < 1e-5, (wrapping, name, err.item())


# --- Ray Train on a cluster whose head has no GPU -------------------------------------------------------------------


@pytest.mark.slow
def test_ray_train_asks_for_the_gpus_of_the_cluster_not_of_the_driver():
    """A head without GPUs and a worker node declaring two (`ray start --num-gpus=2`), the driver on the head (no
    CUDA here): `--device auto` and `cuda` ask Ray Train for a GPU per worker, `cpu` for none."""
    import json
    import subprocess
    import sys

    from tests.cluster_fixtures import LoopbackCluster

    code = ("import json, ray; from trainer.config import RunConfig; from trainer.distributed import scaling_config; "
            "ray.init(logging_level='ERROR'); "
            "print(json.dumps({d: [s.use_gpu, s.num_workers, s._resources_per_worker_not_none] for d in ('auto', 'cuda', 'cpu') "
            "for s in [scaling_config(RunConfig(device=d, workers=2))]}))")
    with LoopbackCluster(cpus_per_node=1) as cluster:
        cluster.start(nodes=2, worker_args=("--num-gpus=2",))
        out = subprocess.run([sys.executable, "-c", code], env={**cluster.env, "RAY_ADDRESS": cluster.gcs},
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    asked = json.loads(out.stdout.strip().splitlines()[-1])
    assert asked["auto"] == asked["cuda"] == [True, 2, {"GPU": 1}]
    assert asked["cpu"] == [False, 2, {"CPU": 1}]


# --- evaluation split over ranks ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return make_mixture(tmp_path_factory.mktemp("heldout"), samples_per_category=8, seed=9,
                        stages={"heldout": {"doc_ocr": 0.5, "web_code": 0.2, "text": 0.3}})


def _rank_eval(rank: int, world: int, tmp: Path, mix: Path, tok_dir: Path, heldout: Path) -> None:
    import json

    import trainer.evaluate
    from trainer.train import evaluate_model

    score_item, scored = trainer.evaluate.score_item, []
    trainer.evaluate.score_item = lambda *a, **kw: scored.append(1) or score_item(*a, **kw)
    for wrapping in ("ddp", "fsdp"):
        scored.clear()
        run = _run(tmp / f"e{rank}", mix, tok_dir, fsdp=wrapping == "fsdp", eval_dir=str(heldout), eval_items=5)
        result = evaluate_model(open_stage(run, stage("stage2"), None))
        (tmp / f"eval-{wrapping}-{rank}.json").write_text(json.dumps({**result, "scored_here": len(scored)}))


def _same(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-6, nan_ok=True), path
    else:
        assert a == b, path


@pytest.mark.slow
def test_evaluation_split_over_ranks_equals_one_process(mix, tok_dir, heldout, tmp_path):
    """Each of 2 ranks scores half of the items and texts (DDP's replicated model, and FSDP2's sharded one); every
    rank returns the result one process gets scoring everything."""
    import json

    from trainer.train import evaluate_model

    spawn(_rank_eval, 2, tmp_path, tmp_path, mix, tok_dir, heldout)
    run = _run(tmp_path / "one", mix, tok_dir, eval_dir=str(heldout), eval_items=5)
    one = evaluate_model(open_stage(run, stage("stage2"), None))
    assert one["items"] == 10 and one["bpb_samples"] > 1  # both halves hold items and texts
    for wrapping in ("ddp", "fsdp"):
        for rank in range(2):
            result = json.loads((tmp_path / f"eval-{wrapping}-{rank}.json").read_text())
            assert result.pop("scored_here") == 5  # half of the 10 items, not all of them
            _same(result, one, f"{wrapping}{rank}")
