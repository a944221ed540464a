"""Checkpoints that load without running code, sharded where the model is.

A checkpoint folder `step-N/` holds:
- `model/` and `optim/`: the model's and the optimizer's tensors, written by `torch.distributed.checkpoint` as
  safetensors (`HuggingFaceStorageWriter`, one file per rank): under FSDP each rank writes and reads only its own
  shards, and a different number of ranks can read them back (resharding); nothing is gathered onto one device.
- `state.json`: the scheduler, the optimizer's hyper-parameters per parameter, the step and the configs.
- `rank<R>.pt`: each rank's data position, tally and RNG, plain tensors and Python data only.

Nothing here is unpickled as code: safetensors and JSON hold no objects, and `rank<R>.pt` is read with
`torch.load(weights_only=True)`, which refuses anything but tensors and plain containers. (DCP's default format keeps
its `.metadata` as a pickle, so it is not used.)
"""

from __future__ import annotations

import json
import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
)
from torch.distributed.tensor import DTensor

MODEL, OPTIM, STATE = "model", "optim", "state.json"
SHARDED = StateDictOptions(full_state_dict=False)  # local shards under FSDP: nothing gathered


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that holds something other than tensors and plain data: refused, never executed."""


def latest_checkpoint(ckpt: Path) -> Path | None:
    done = sorted(ckpt.glob("step-*")) if ckpt.is_dir() else []
    return done[-1] if done else None


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain data (`weights_only` loads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dcp(fn, state: dict, **kw) -> None:
    with warnings.catch_warnings():  # one process without a process group: DCP says it runs undistributed
        warnings.filterwarnings("ignore", message=".*torch.distributed.*", category=UserWarning)
        fn(state, **kw)


def save_tensors(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The model's and optimizer's tensors into `folder/model`, `folder/optim` (a collective: every rank calls it);
    returns the optimizer's param groups (hyper-parameters and parameter names), for `state.json`."""
    optim = get_optimizer_state_dict(model, optimizer, options=SHARDED)
    tensors = {f"{fqn}.{name}": v for fqn, state in optim["state"].items() for name, v in state.items()}
    for part, state in ((MODEL, _untied(get_model_state_dict(model, options=SHARDED))), (OPTIM, tensors)):
        _dcp(dcp.save, state, storage_writer=HuggingFaceStorageWriter(str(folder / part), _files(state),
                                                                      save_distributed=True))
    return optim["param_groups"]


def _files(state: dict) -> dict[str, int]:
    """One safetensors file per module (per parameter for the optimizer): a reader maps one file at a time, so a
    resume's resident memory grows by the largest module, not by the checkpoint."""
    modules = sorted({k.rsplit(".", 1)[0] for k in state})
    index = {m: i + 1 for i, m in enumerate(modules)}
    return {k: index[k.rsplit(".", 1)[0]] for k in state}


def _untied(state: dict) -> dict:
    """The state without the second name of a tied weight (the LM head tied to the embeddings): safetensors holds
    one tensor once, and loading it fills both names."""
    seen, out = set(), {}
    for k, v in state.items():
        t = v.to_local() if isinstance(v, DTensor) else v
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def save_rank(folder: Path, rank: int, own: dict) -> None:
    torch.save(own, folder / f"rank{rank}.pt")


def load_model(folder: Path, model: torch.nn.Module) -> None:
    """The checkpoint's weights straight into the (sharded) parameters: each rank reads its own slices."""
    _require(folder / MODEL)
    state = _untied(get_model_state_dict(model, options=SHARDED))
    _dcp(dcp.load, state, storage_reader=HuggingFaceStorageReader(str(folder / MODEL)))
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=False, strict=False))


def load_optimizer(folder: Path, raw: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   param_groups: list[dict]) -> None:
    """AdamW's state for the parameters the checkpoint has it for (one that never had a gradient has none, as in an
    uninterrupted run), allocated like each parameter (sharded under FSDP) and read in place."""
    _require(folder / OPTIM)
    params = dict(raw.named_parameters(remove_duplicate=False))
    saved = HuggingFaceStorageReader(str(folder / OPTIM)).read_metadata().state_dict_metadata
    state: dict = {}
    for key, meta in saved.items():
        fqn, _, name = key.rpartition(".")
        p = params.get(fqn)
        if p is None:
            raise ValueError(f"{folder}: optimizer state for {fqn}, which this model does not have")
        shaped = tuple(meta.size) == tuple(p.shape)
        state[key] = (torch.empty_like(p.detach(), dtype=meta.properties.dtype) if shaped
                      else torch.empty(tuple(meta.size), dtype=meta.properties.dtype))
    _dcp(dcp.load, state, storage_reader=HuggingFaceStorageReader(str(folder / OPTIM)))
    # straight into AdamW's per-parameter state: torch's set_optimizer_state_dict first allocates a zero state and
    # zero gradients for every parameter (a fake step), which a resume would hold on top of the loaded state
    if len(param_groups) != len(optimizer.param_groups):
        raise ValueError(f"{folder}: {len(param_groups)} optimizer param groups saved, this run has "
                         f"{len(optimizer.param_groups)}")
    nested: dict[str, dict] = {}
    for key, v in state.items():
        fqn, _, name = key.rpartition(".")
        nested.setdefault(fqn, {})[name] = v
    optimizer.state.clear()
    for group, saved in zip(optimizer.param_groups, param_groups):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "params"})
        for fqn in saved["params"]:
            if fqn in nested:
                if group.get("fused") or group.get("capturable"):  # their step counter lives on the device
                    nested[fqn]["step"] = nested[fqn]["step"].to(params[fqn].device)
                optimizer.state[params[fqn]] = nested[fqn]


def read_state(folder: Path) -> dict:
    _require(folder / STATE)
    return json.loads((folder / STATE).read_text())


def read_rank(folder: Path, rank: int) -> dict:
    path = folder / f"rank{rank}.pt"
    _require(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(f"{path}: holds objects other than tensors and plain data; refused (not loaded). "
                               f"Delete {folder} to resume from an earlier checkpoint. ({str(e).splitlines()[0]})") from e


def _require(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: {path.parent} is not a complete checkpoint of this trainer "
                                f"(older trainers wrote a pickled state.pt, which is not loaded); delete it to start "
                                f"from the previous checkpoint or from scratch")


def fsync_tree(folder: Path) -> None:
    for f in folder.rglob("*"):
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
