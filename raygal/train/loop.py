"""The training loop that every Ray Train worker runs, for every model.

One function, ``train_loop_per_worker``, serves the VAE, the flows, the CFM and the baseline.
The inputs arrive prepared by Ray Data (``raygal.inputs.ModelInputs.prepare``: colours, the
asinh stretch, standardised targets; augmentation per epoch), as torch batches on the worker's
device; each model's ``forward(batch)`` returns its loss dict, so DDP (``prepare_model``)
synchronises gradients the same way for all. Per epoch: train on this worker's shard of the data, validate
on its shard of the validation set, average the validation loss over all workers, decide early
stopping identically on every worker, and report metrics with a checkpoint (rank 0 writes it:
weights, optimiser, epoch, best weights so far, history, config, normalisation statistics).
A restarted worker group resumes from the last checkpoint, so a failure costs at most the
epoch in progress.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import time

import torch

from ..inputs import NormStats

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def build_model(cfg: dict, stats: NormStats, image_shape=None):
    """The model (a ``SavedModel``) a training config asks for, freshly initialised (on CPU)."""
    from ..models import model_class

    return model_class(cfg["model"]).from_training_config(cfg, stats, image_shape)


def make_optimizer(cfg: dict, params):
    cls = torch.optim.AdamW if cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))


def make_scheduler(cfg: dict, opt):
    """The learning-rate schedule, or None. 'plateau' halves the rate each time the
    validation loss has not improved for ``max(1, patience // 2)`` epochs (down to 1/100 of
    the start), so a noisy validation loss is met with smaller steps before early stopping
    ends the run at ``patience`` epochs without improvement."""
    if cfg.get("lr_schedule", "none") != "plateau":
        return None
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=0.5, patience=max(1, cfg["patience"] // 2) - 1,
        threshold=1e-6, threshold_mode="abs", min_lr=cfg["lr"] / 100)


class WeightAverage:
    """An exponential moving average of a module's floating-point weights (``ema_decay``).

    Updated after every optimiser step; validation, early stopping and the exported best
    model use the averaged weights, training continues on the raw ones. The average smooths
    the step-to-step jitter of training with stochastic losses (flow matching's random t and
    noise) out of the weights that are validated and kept. The decay warms up as
    min(decay, (1 + n) / (10 + n)) after n updates, so early epochs are not dominated by the
    initial weights. DDP keeps every rank's weights identical, so every rank's average is too.

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> avg = WeightAverage(m, decay=0.5)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> avg.update(m); avg.update(m)
    >>> with avg.applied(m):
    ...     averaged = m.weight.item()
    >>> 0.0 < averaged < 1.0, m.weight.item()       # the raw weight is back afterwards
    (True, 1.0)
    """

    def __init__(self, module: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), not {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()
                       if v.dtype.is_floating_point}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                if self.shadow[k].device != v.device:       # the module moved to its device
                    self.shadow[k] = self.shadow[k].to(v.device)
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1.0 - d)

    def state_dict(self) -> dict:
        return {"updates": self.updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}

    def averaged_state(self, module: torch.nn.Module) -> dict:
        """The module's state dict with the averaged weights in place of the raw ones."""
        return {k: (self.shadow[k] if k in self.shadow else v).detach().cpu().clone()
                for k, v in module.state_dict().items()}

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module):
        """A context in which ``module`` holds the averaged weights (raw ones restored after)."""
        raw = {k: v.detach().clone() for k, v in module.state_dict().items()
               if k in self.shadow}
        module.load_state_dict(self.shadow, strict=False)
        try:
            yield module
        finally:
            module.load_state_dict(raw, strict=False)


def make_weight_average(cfg: dict, module: torch.nn.Module) -> WeightAverage | None:
    decay = float(cfg.get("ema_decay") or 0.0)
    return WeightAverage(module, decay) if decay > 0 else None


def _all_reduce_sum(values: list[float]) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _nodes_of_workers(node_id: str) -> list[str]:
    """The sorted distinct Ray node ids of every worker in the group (all-gathered)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [node_id]
    ids = [None] * dist.get_world_size()
    dist.all_gather_object(ids, node_id)
    return sorted(set(ids))


def _state_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_checkpoint_state(path: str) -> tuple[dict, dict]:
    """(state, meta) of a checkpoint folder; tensors only, loaded with weights_only=True."""
    with open(os.path.join(path, STATE_FILE), "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    with open(os.path.join(path, META_FILE)) as f:
        meta = json.load(f)
    return state, meta


def _maybe_fail(fail_at: int | None, workers: int, epoch: int, rank: int, run_id: str) -> None:
    """Fault injection for the fault-tolerance tests (``fit(..., fail_at_epoch=E)``): worker
    rank 1 (or 0 alone) dies once, mid-way through epoch E (after its first batch, and after a
    pause that stands for the rest of the epoch's work: the controller registers the previous
    epoch's checkpoint within a health-check interval)."""
    if fail_at is None or epoch != fail_at or rank != min(1, workers - 1):
        return
    marker = os.path.join(tempfile.gettempdir(), f"raygal-fail-{run_id}")
    if os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(epoch))
    time.sleep(2.0)
    os._exit(1)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    cfg, stats = config["cfg"], NormStats.from_dict(config["stats"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # Recorded per epoch: an elastic run (min_workers) shows where its group shrank or grew.
    nodes = _nodes_of_workers(ray.get_runtime_context().get_node_id())
    threads = config.get("torch_threads")
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(cfg["seed"])  # identical initialisation on every rank
    model = build_model(cfg, stats, config.get("image_shape"))
    opt = make_optimizer(cfg, model.trainable_parameters())
    sched = make_scheduler(cfg, opt)

    start_epoch, best_val, bad_epochs, history = 0, float("inf"), 0, []
    best_state = None
    resumed_from = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, meta = load_checkpoint_state(d)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        best_state = state.get("best_model")
        start_epoch = int(state["epoch"]) + 1
        best_val, bad_epochs = float(state["best_val"]), int(state["bad_epochs"])
        history = meta.get("history", [])
        resumed_from = int(state["epoch"])
    avg = make_weight_average(cfg, model)    # the average starts from the resumed weights...
    if avg is not None and ckpt is not None and state.get("ema") is not None:
        avg.load_state_dict(state["ema"])    # ...or continues the checkpoint's

    inner = model
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    use_amp = device.type == "cuda"
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    bs = cfg["batch_size"]
    fail_at = config.get("fail_at_epoch")

    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        lr_epoch = opt.param_groups[0]["lr"]
        model.train()
        tot, n_rows = 0.0, 0
        for batch in train_shard.iter_torch_batches(
                batch_size=bs, device=device, local_shuffle_buffer_size=min(4 * bs, 4096),
                local_shuffle_seed=cfg["seed"] * 1000 + epoch):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                enabled=use_amp):
                out = model(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            if avg is not None:
                avg.update(inner)
            _maybe_fail(fail_at, cfg["workers"], epoch, rank, config.get("run_id", "run"))
            n = len(batch["objid"])
            tot += float(out["loss"].detach()) * n
            n_rows += n
        t_train = time.perf_counter() - t0

        model.eval()
        vsum, vn = 0.0, 0
        with torch.no_grad(), (avg.applied(inner) if avg is not None
                               else contextlib.nullcontext()):
            for batch in val_shard.iter_torch_batches(batch_size=max(bs, 256), device=device):
                out = inner(batch)
                n = len(batch["objid"])
                vsum += float(out["loss"]) * n
                vn += n
        tot, n_rows, vsum, vn = _all_reduce_sum([tot, n_rows, vsum, vn])
        if n_rows == 0:
            raise RuntimeError(f"no usable training rows in epoch {epoch + 1}: every row lacks "
                               f"the model's inputs or targets (check the data's columns)")
        train_loss = tot / n_rows
        val_loss = vsum / vn if vn else train_loss
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise RuntimeError(f"the loss is not finite in epoch {epoch + 1} (train "
                               f"{train_loss}, validation {val_loss}): NaN or infinite inputs "
                               f"or statistics, or a learning rate too high")
        improved = val_loss < best_val - 1e-6
        if improved:
            best_val, bad_epochs = val_loss, 0
            best_state = (avg.averaged_state(inner) if avg is not None else
                          {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()})
        else:
            bad_epochs += 1
        if sched is not None:
            sched.step(val_loss)        # the all-reduced loss: every rank steps alike
        stop = bad_epochs >= cfg["patience"] or epoch == cfg["epochs"] - 1
        metrics = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "best_val_loss": best_val, "train_rows": int(n_rows),
                   "samples_per_s": n_rows / max(t_train, 1e-9), "epoch_time_s": t_train,
                   "lr": lr_epoch, "workers": ctx.get_world_size(), "nodes": nodes,
                   "resumed_from_epoch": resumed_from, "early_stopped": bool(
                       stop and epoch < cfg["epochs"] - 1)}
        history = [h for h in history if h["epoch"] < epoch] + [metrics]

        checkpoint = None
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                state = {"model": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
                         "optimizer": opt.state_dict(), "epoch": epoch, "best_val": best_val,
                         "bad_epochs": bad_epochs, "best_model": best_state,
                         "scheduler": sched.state_dict() if sched is not None else None,
                         "ema": avg.state_dict() if avg is not None else None}
                with open(os.path.join(tmp, STATE_FILE), "wb") as f:
                    f.write(_state_bytes(state))
                with open(os.path.join(tmp, META_FILE), "w") as f:
                    json.dump({"config": cfg, "stats": stats.to_dict(), "history": history,
                               "image_shape": config.get("image_shape"),
                               "description": inner.describe()}, f, default=str)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch-{epoch:04d}")
        if stop:
            break
