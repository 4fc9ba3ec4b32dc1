"""Shared pieces of the evaluation tests: tiny models trained in-process and posterior catalogs
written as ``raygal infer`` writes them, without Ray (the evaluation reads files; how they were
made is the inference tests' business)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raygal.catalog import CATALOG_MANIFEST, PART_FMT, SETTINGS_FILE
from raygal.shards import shard_uris


@pytest.fixture(scope="module", autouse=True)
def few_threads():
    """One torch thread for the module: the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(model, table, steps: int, lr: float = 3e-3):
    """A few Adam steps: evaluation needs a model that runs, not a good one."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        loss = model.loss(table)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def write_catalog(post, data: str, out: Path, model_uri: str, samples: int = 100,
                  split_std: bool = False, keep_samples: bool = False) -> str:
    """A posterior catalog in ``raygal.infer``'s layout (one part per input shard, named as
    infer names block 0, sorted by objid; _infer.json; the manifest mapping parts to input
    shards), made in-process without Ray."""
    out.mkdir(parents=True)
    parts = []
    for k, uri in enumerate(shard_uris(data)):
        t = pq.read_table(uri)
        summ = post.summarize(t, samples, seed=k, keep_samples=keep_samples)
        cols = {"objid": t.column("objid").to_numpy()}
        cols.update(summ)
        if split_std:   # what an ensemble adds: an aleatoric/epistemic split of the std
            for tg in post.targets:
                cols[f"{tg}_std_aleatoric"] = np.sqrt(0.8) * summ[f"{tg}_std"]
                cols[f"{tg}_std_epistemic"] = np.sqrt(0.2) * summ[f"{tg}_std"]
        order = np.argsort(cols["objid"], kind="stable")
        table = pa.table({k: (pa.array(np.asarray(v)[order].astype(str)) if k == "status"
                              else pa.FixedShapeTensorArray.from_numpy_ndarray(
                                  np.ascontiguousarray(v[order])) if k == "samples"
                              else pa.array(np.asarray(v)[order])) for k, v in cols.items()})
        name = PART_FMT.format(shard=k, block=0)
        pq.write_table(table, out / name)
        parts.append({"name": name, "shard": Path(uri).name, "offset": 0,
                      "num_rows": table.num_rows})
    (out / CATALOG_MANIFEST).write_text(json.dumps(
        {"format": "raygal-catalog", "num_rows": sum(p["num_rows"] for p in parts),
         "parts": parts}))
    (out / SETTINGS_FILE).write_text(json.dumps(
        {"model": model_uri, "data": data, "samples": samples, "solver": None,
         "keep_samples": keep_samples, "seed": 0, "targets": list(post.targets)}))
    return str(out)
