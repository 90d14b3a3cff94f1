"""The training loop: end-to-end force loss, AdamW, schedule, early stopping,
checkpoints, optional DistributedDataParallel.

Works on precomputed :class:`~fastfeat.train.data.FeatureSet` objects (the
features never change during training). A batch is a set of whole structures
whose atoms are concatenated. Under ``torchrun`` (``WORLD_SIZE`` > 1) every
rank takes every ``world``-th structure of each global batch, the loss is
normalised by the atom count of the *global* batch (times the world size,
because DDP averages gradients), so a distributed step is the same step as a
single-process step on the same global batch.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from fastfeat._validation import check_feature_arrays

from .config import TrainConfig
from .data import FeatureSet, atom_rows
from .model import StaggeredNetwork

__all__ = ["train_model", "check_features", "predict", "Distributed", "TrainResult"]

#: config keys that change which frames and targets a run trains and validates on
_DATA_KEYS = ("seed", "val_fraction", "target", "forces_key")


class Distributed:
    """Rank/world of the current process; initialises gloo/nccl under torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def close(self):
        """Leave the process group after a successful run: wait for every rank, then destroy it. A rank
        whose interpreter exits with the gloo group alive can abort in its teardown ("terminate called
        without an active exception", pytorch/pytorch#190489)."""
        if self.enabled and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def all_sum(self, values):
        """Sum a list of floats over ranks (float64)."""
        t = torch.tensor(values, dtype=torch.float64)
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()


class TrainResult:
    """Outcome of :func:`train_model`: best model, history, metrics."""

    def __init__(self, model, history, best_epoch, best_val, stopped):
        self.model = model
        self.history = history
        self.best_epoch = best_epoch
        self.best_val = best_val
        self.stopped = stopped


def _tensors(fs: FeatureSet, dtype):
    return (torch.as_tensor(fs.invariant, dtype=dtype), torch.as_tensor(fs.covariant, dtype=dtype),
            torch.as_tensor(fs.species, dtype=torch.int64), torch.as_tensor(fs.target, dtype=dtype))


@torch.no_grad()
def predict(model: StaggeredNetwork, fs: FeatureSet, chunk_structures=64) -> np.ndarray:
    """Forces (N, 3) of a FeatureSet, float64 numpy."""
    model.eval()
    dt = model.feature_mean.dtype
    out = []
    for s0 in range(0, fs.n_structures, chunk_structures):
        a0, a1 = fs.offsets[s0], fs.offsets[min(s0 + chunk_structures, fs.n_structures)]
        out.append(model(torch.as_tensor(fs.invariant[a0:a1], dtype=dt), torch.as_tensor(fs.covariant[a0:a1], dtype=dt),
                         torch.as_tensor(fs.species[a0:a1], dtype=torch.int64)).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3))


def _build_model(cfg: TrainConfig, spec, train: FeatureSet) -> StaggeredNetwork:
    torch.manual_seed(cfg.seed)
    model = StaggeredNetwork(spec, hidden=cfg.hidden, head=cfg.head, activation=cfg.activation,
                             eps_rel=cfg.eps_rel, eps_abs=cfg.eps_abs, gram=cfg.gram,
                             input_clip=cfg.input_clip)
    if cfg.dtype == "float64":
        model = model.double()
    model.set_statistics(train.invariant, train.covariant, train.species, train.target)
    return model


@torch.no_grad()
def _ema_update(ema: StaggeredNetwork, model: StaggeredNetwork, decay: float):
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter (buffers are fixed statistics)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.mul_(decay).add_(pm.detach(), alpha=1.0 - decay)


def _scheduler(cfg: TrainConfig, opt):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * cfg.min_lr_ratio)
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.plateau_factor,
                                                          patience=cfg.plateau_patience,
                                                          min_lr=cfg.lr * cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)


#: settings the learning-rate schedule depends on (besides the epoch), per schedule
_SCHEDULE_KEYS = {"cosine": ("schedule", "lr", "min_lr_ratio", "epochs"),
                  "plateau": ("schedule", "lr", "min_lr_ratio", "plateau_factor", "plateau_patience"),
                  "constant": ("schedule", "lr")}


def _replan_scheduler(cfg: TrainConfig, opt, start_epoch: int):
    """The schedule of ``cfg`` positioned at ``start_epoch`` (0-based epoch about to run).

    Cosine and constant schedules give each epoch the learning rate a run started with ``cfg``
    would use at that epoch; a plateau schedule restarts at ``cfg.lr`` with fresh patience.
    """
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr
    if cfg.schedule == "plateau":
        return _scheduler(cfg, opt)
    if cfg.schedule == "cosine":
        # the closed form of CosineAnnealingLR (whose recursive steps would start from the old lr);
        # a later resume with these settings continues it with CosineAnnealingLR from the current lr
        ratio, epochs = cfg.min_lr_ratio, cfg.epochs
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda epoch: ratio + (1.0 - ratio) * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0,
            last_epoch=start_epoch - 1)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0, last_epoch=start_epoch - 1)


def _short(value, limit=60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _differences(old: dict, new: dict, prefix="") -> list:
    """``key: old -> new`` for every differing key (the spec JSON compared field by field)."""
    import json

    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if a == b:
            continue
        if key == "spec" and not prefix and isinstance(a, str) and isinstance(b, str):
            try:
                out += _differences(json.loads(a), json.loads(b), prefix="spec.")
                continue
            except ValueError:
                pass
        out.append(f"{prefix}{key}: {_short(a)} in the checkpoint, {_short(b)} now")
    return out


def _save(path, state):
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def check_features(fs: FeatureSet, spec, what="features"):
    """ValueError when ``fs`` was not made with ``spec`` (feature widths, species indices: the
    runtime's check, :func:`fastfeat._validation.check_feature_arrays`) or its targets are not (N, 3)."""
    check_feature_arrays(spec, fs.invariant, fs.covariant, fs.species, what=f"{what}: ")
    if np.shape(fs.target) != (fs.n_atoms, 3):
        raise ValueError(f"{what}: the target must have shape ({fs.n_atoms}, 3), got {np.shape(fs.target)}")


def train_model(train: FeatureSet, val: FeatureSet, spec, cfg: TrainConfig, *, checkpoint=None, resume=False,
                data_sha="", log=None, dist_ctx=None) -> TrainResult:
    """Train a :class:`StaggeredNetwork` on precomputed features.

    Parameters
    ----------
    train, val : FeatureSet
        Training and validation structures (features + targets).
    spec : fastfeat.FeatureSpec
        The spec the features were made with: other feature widths or species indices out of its
        range are a ValueError naming both numbers (:func:`check_features`).
    cfg : TrainConfig
    checkpoint : str, optional
        Written after every epoch (main rank): model, optimiser, scheduler,
        best weights, history. With ``resume=True`` training continues from it.
    resume : bool
        Continue from ``checkpoint``: its weights, optimiser moments, best
        model, history and epoch count. The model settings must be those of
        the checkpoint (ValueError naming each differing key). ``cfg.epochs``
        is the new *total* (at least the epochs already run), so a finished
        run can be extended. With the checkpoint's ``epochs``/``lr``/schedule
        settings the run continues exactly as if it had not stopped; when they
        differ the schedule is re-planned: a cosine (or constant) schedule
        gives every remaining epoch the learning rate a run started with
        ``cfg`` would use at that epoch (e.g. 2 epochs, then ``epochs=4``:
        epoch 3 runs at ``(lr + lr·min_lr_ratio) / 2``), a plateau schedule
        restarts at ``cfg.lr``. ``cfg.weight_decay`` always applies.
    data_sha : str
        Hash of the training data; a checkpoint of other data is refused on resume.
    log : callable, optional
        Receives progress lines (main rank only); default prints to stderr.
    dist_ctx : Distributed, optional

    Returns
    -------
    TrainResult
        ``model`` holds the best (lowest validation RMSE) weights.
    """
    if train.n_structures == 0 or train.n_atoms == 0:
        raise ValueError("the training set is empty (no structures/atoms)")
    if val.n_structures == 0 or val.n_atoms == 0:
        raise ValueError("the validation set is empty (no structures/atoms)")
    check_features(train, spec, "training set")
    check_features(val, spec, "validation set")
    dctx = dist_ctx or Distributed()
    if log is None:
        def log(msg):
            print(msg, file=sys.stderr, flush=True)
    say = log if dctx.is_main else (lambda msg: None)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    model = _build_model(cfg, spec, train)
    hp = model.hyperparameters()
    ddp = model
    if dctx.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = _scheduler(cfg, opt)
    g_t, v_t, s_t, t_t = _tensors(train, dtype)
    vg_t, vv_t, vs_t, vt_t = _tensors(val, dtype)
    start_epoch, best_val, best_epoch, bad_epochs = 0, math.inf, -1, 0
    # validated, kept and exported: the exponential moving average of the weights when cfg.ema_decay > 0
    ema = copy.deepcopy(model) if cfg.ema_decay else None
    judged = ema if ema is not None else model
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    history = []
    if resume:
        if not checkpoint or not os.path.exists(checkpoint):
            raise FileNotFoundError(f"`--resume` needs an existing checkpoint, got {checkpoint!r}")
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if ck["hyperparameters"] != hp:
            diff = _differences(ck["hyperparameters"], hp) or ["(no single setting differs)"]
            raise ValueError(f"checkpoint {checkpoint!r} was written for a different model; cannot resume: "
                             + "; ".join(diff))
        if data_sha and ck.get("data_hash") and ck["data_hash"] != data_sha:
            old = ck.get("config") or {}
            # settings that change the frames or targets a data file gives, or its train/validation split
            why = [f"{k} {getattr(cfg, k)!r} (was {old[k]!r})" for k in _DATA_KEYS
                   if k in old and old[k] != getattr(cfg, k)]
            raise ValueError(f"checkpoint {checkpoint!r} was trained on other data (hash {ck['data_hash'][:12]}…, "
                             f"now {data_sha[:12]}…)"
                             + (f": settings that select the data differ: {', '.join(why)}" if why else
                                ": the data or its train/validation split differ (with an unchanged data file: a "
                                "file whose frames carry info['trajectory'] is now split by whole trajectories, "
                                "which a checkpoint of the earlier frame split cannot continue)")
                             + "; cannot resume")
        model.load_state_dict(ck["model"])
        if ema is not None:
            if ck.get("ema") is None:
                raise ValueError(f"checkpoint {checkpoint!r} was written without `ema_decay`; cannot resume with it")
            ema.load_state_dict(ck["ema"])
        start_epoch = ck["epoch"] + 1
        if cfg.epochs < start_epoch:
            raise ValueError(f"`epochs` must be at least the {start_epoch} epochs already run in checkpoint "
                             f"{checkpoint!r} (`epochs` is the total, not the number of further epochs), "
                             f"got {cfg.epochs}")
        opt.load_state_dict(ck["optimizer"])
        for group in opt.param_groups:
            group["weight_decay"] = cfg.weight_decay
        old_cfg = ck.get("config") or {}
        changed = [k for k in _SCHEDULE_KEYS[cfg.schedule] if k in old_cfg and old_cfg[k] != getattr(cfg, k)]
        if changed:
            sched = _replan_scheduler(cfg, opt, start_epoch)
        else:
            sched.load_state_dict(ck["scheduler"])
        best_state, best_val, best_epoch = ck["best_state"], ck["best_val"], ck["best_epoch"]
        bad_epochs, history = ck["bad_epochs"], ck["history"]
        say(f"resumed from {checkpoint} after epoch {start_epoch}")
        if changed:
            say("learning-rate schedule re-planned for "
                + ", ".join(f"{k}={getattr(cfg, k)!r} (was {old_cfg[k]!r})" for k in changed)
                + f": lr {opt.param_groups[0]['lr']:.2e} at epoch {start_epoch + 1}")
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{model!r}\ntrain: {train.n_structures} structures / {train.n_atoms} atoms; "
        f"val: {val.n_structures} / {val.n_atoms}; world size {dctx.world}; {n_params} parameters")
    t_start = time.perf_counter()
    stopped = "epochs"
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(train.n_structures)
        sum_loss, n_batches = 0.0, 0
        for b0 in range(0, len(perm), cfg.batch_size):
            batch = perm[b0:b0 + cfg.batch_size]
            n_global = int((train.offsets[batch + 1] - train.offsets[batch]).sum())
            mine = batch[dctx.rank::dctx.world]
            rows = torch.from_numpy(atom_rows(train.offsets, mine))
            f = ddp(g_t.index_select(0, rows), v_t.index_select(0, rows), s_t.index_select(0, rows))
            err = f - t_t.index_select(0, rows)
            # mean over the global batch; DDP averages gradients over ranks, hence * world
            loss = (err * err).sum() * (dctx.world / (3.0 * n_global))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if ema is not None:
                _ema_update(ema, model, cfg.ema_decay)
            sum_loss += float(loss.detach()) / dctx.world
            n_batches += 1
        (train_loss,) = dctx.all_sum([sum_loss])
        train_loss /= max(n_batches, 1)
        # validation: every rank takes a share of the structures; sums all-reduced
        judged.eval()
        mine = np.arange(val.n_structures)[dctx.rank::dctx.world]
        with torch.no_grad():
            rows = torch.from_numpy(atom_rows(val.offsets, mine))
            err = judged(vg_t.index_select(0, rows), vv_t.index_select(0, rows), vs_t.index_select(0, rows)) \
                - vt_t.index_select(0, rows)
            sums = [float(err.abs().double().sum()), float((err.double() ** 2).sum()), 3.0 * len(rows)]
        abs_sum, sq_sum, count = dctx.all_sum(sums)
        val_mae, val_rmse = abs_sum / count, math.sqrt(sq_sum / count)
        lr = opt.param_groups[0]["lr"]
        if cfg.schedule == "plateau":
            sched.step(val_rmse)
        else:
            sched.step()
        improved = val_rmse < best_val * (1 - 1e-6)
        if improved:
            best_val, best_epoch, bad_epochs = val_rmse, epoch, 0
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
        else:
            bad_epochs += 1
        dt_epoch = time.perf_counter() - t0
        history.append({"epoch": epoch, "train_mse": train_loss, "val_mae": val_mae, "val_rmse": val_rmse,
                        "lr": lr, "seconds": dt_epoch})
        say(f"epoch {epoch + 1:4d}/{cfg.epochs}  loss {train_loss:.5g}  val MAE {val_mae:.4f}  "
            f"val RMSE {val_rmse:.4f}  lr {lr:.2e}  {dt_epoch:.1f}s{'  *' if improved else ''}")
        if checkpoint and dctx.is_main:
            _save(checkpoint, {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "ema": None if ema is None else ema.state_dict(),
                               "scheduler": sched.state_dict(), "best_state": best_state, "best_val": best_val,
                               "best_epoch": best_epoch, "bad_epochs": bad_epochs, "history": history,
                               "hyperparameters": hp, "config": cfg.to_dict(), "data_hash": data_sha})
        if cfg.patience and bad_epochs >= cfg.patience:
            stopped = "early stopping"
            say(f"early stopping: no improvement for {cfg.patience} epochs (best epoch {best_epoch + 1})")
            break
        over = bool(cfg.time_limit) and time.perf_counter() - t_start > cfg.time_limit
        if dctx.all_sum([float(over)])[0] > 0:  # every rank stops at the same epoch
            stopped = "time limit"
            say(f"time limit of {cfg.time_limit:g} s reached after epoch {epoch + 1}")
            break
    model.load_state_dict(best_state)
    model.eval()
    dctx.barrier()
    return TrainResult(model, history, best_epoch, best_val, stopped)
