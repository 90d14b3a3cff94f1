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
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist

from fastfeat._validation import check_feature_arrays

from .config import TrainConfig
from .data import FeatureSet, atom_rows
from .model import StaggeredNetwork

__all__ = ["train_model", "check_features", "predict", "Distributed", "TrainResult", "TrainingDiverged",
           "TrainingInterrupted", "CheckpointError", "load_checkpoint", "DeferredStop"]

#: config keys that change which frames and targets a run trains and validates on
_DATA_KEYS = ("seed", "val_fraction", "target", "forces_key")

#: what a checkpoint written by :func:`train_model` holds (at least)
_CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "best_state", "best_val", "best_epoch", "bad_epochs",
                    "history", "hyperparameters")
#: checkpoint format: 2 numbers the history records from 1 (format 1, without the key: from 0) and records
#: why the run stopped (``stopped``)
_CHECKPOINT_FORMAT = 2


class TrainingDiverged(ValueError):
    """The training loss or the validation RMSE of an epoch is not finite (NaN/inf): the run stops, nothing is
    exported. ``epoch`` (1-based) is the epoch that diverged, ``best_epoch`` (1-based, 0 = none) the best epoch
    that validated before it; the checkpoint, if any, still holds the run up to the epoch before."""

    def __init__(self, message, epoch, best_epoch):
        super().__init__(message)
        self.epoch = epoch
        self.best_epoch = best_epoch


class TrainingInterrupted(KeyboardInterrupt):
    """A run stopped at once by a second Ctrl-C (or SIGTERM), or by a KeyboardInterrupt where no deferring
    handler could be installed: nothing was exported. ``signum`` is the signal (None: unknown, a plain
    KeyboardInterrupt), ``saved_epochs`` the epochs the checkpoint holds (0: none of this run), ``status``
    the conventional exit status (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message, signum=None, saved_epochs=0):
        super().__init__(message)
        self.signum = signum
        self.saved_epochs = saved_epochs

    @property
    def status(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a fastfeat training checkpoint."""


def load_checkpoint(path) -> dict:
    """The checkpoint dict at ``path`` (read with ``weights_only=True``: tensors, dicts, lists, numbers and
    strings only, no pickled code), its history numbered from 1 whatever the format that wrote it.

    Raises
    ------
    CheckpointError
        (a ValueError) naming the file, for a truncated, empty or foreign file (e.g. an .onnx model) or one
        without the entries :func:`train_model` writes.
    """
    import torch

    path = os.fspath(path)

    def refuse(reason):
        return CheckpointError(f"checkpoint {path!r} is not a readable fastfeat checkpoint (truncated or another "
                               f"file?): {reason}")

    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, UnpicklingError, RuntimeError of a broken zip, OSError, ...
        raise refuse(_load_failure(exc)) from None
    if not isinstance(ck, dict):
        raise refuse(f"it holds a {type(ck).__name__}, not a checkpoint dict")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
    if missing:
        raise refuse(f"it lacks {', '.join(missing)}")
    if ck.get("format", 1) < 2:  # history epochs of the first format count from 0
        ck["history"] = [{**h, "epoch": h["epoch"] + 1} for h in ck["history"]]
    return ck


def _load_failure(exc) -> str:
    """A short reason for a failed ``torch.load`` (its messages run to paragraphs of advice)."""
    text = str(exc).strip()
    if isinstance(exc, EOFError):
        return "EOFError: the file ends early (empty or cut off)"
    if "WeightsUnpickler error:" in text:  # a pickle of other objects (or no pickle at all)
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        return "UnpicklingError: not a checkpoint of plain data" + (f" ({detail[0].strip()[:120]})" if detail else "")
    first = text.splitlines()[0] if text else ""
    first = first.split(". ", 1)[0].rstrip(".")
    return type(exc).__name__ + (f": {first[:200]}" if first else "")


_SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def signal_name(signum) -> str:
    return _SIGNAL_NAMES.get(signum, "Ctrl-C") if signum else "Ctrl-C"


class DeferredStop:
    """Context manager: inside it, the first SIGINT (Ctrl-C) or SIGTERM sets ``signum`` (a training loop stops
    at the end of the current epoch, as at its time limit); a second one raises KeyboardInterrupt at once.

    The handlers are installed only in the main thread, for SIGINT only where Python's default handler
    (``signal.default_int_handler``) is in place and for SIGTERM only where the default action (``SIG_DFL``)
    is (elsewhere someone else handles them); they are restored on exit. Nested, the inner one is the outer
    one: ``with DeferredStop() as stop`` gives the instance already active in the main thread.
    """

    _active = None

    def __init__(self):
        self.signum = None
        self._saved = {}
        self._nested = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        if DeferredStop._active is not None:
            self._nested = True
            return DeferredStop._active
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                signal.signal(signum, self._handler)
                self._saved[signum] = default
        DeferredStop._active = self
        return self

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handler(self, signum, frame):
        first = self.signum is None
        self.signum = signum
        if not first:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._nested or DeferredStop._active is not self:
            return False
        for signum, old in self._saved.items():
            signal.signal(signum, old)
        self._saved = {}
        DeferredStop._active = None
        return False


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
    """Outcome of :func:`train_model`: best model, history, metrics.

    ``history`` holds one record per epoch (``epoch`` counts from 1), ``best_epoch`` is the best epoch's index
    into it (0-based: its record's ``epoch`` is ``best_epoch + 1``), ``stopped`` one of "epochs", "early
    stopping", "time limit", "interrupted", ``signal`` the signal number of a Ctrl-C/SIGTERM that stopped
    the run (None otherwise).
    """

    def __init__(self, model, history, best_epoch, best_val, stopped, signal=None):
        self.model = model
        self.history = history
        self.best_epoch = best_epoch
        self.best_val = best_val
        self.stopped = stopped
        self.signal = signal


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


#: training settings a resume may change (the later epochs use the new value), named in a note when it does
_RESUME_NOTED_KEYS = ("batch_size", "dtype", "weight_decay", "grad_clip", "ema_decay")

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
    """Write ``state`` to ``path`` through ``path.tmp`` (the old file stays whole until the new one is); the
    temporary file does not outlive a failed or interrupted write."""
    tmp = f"{path}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


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
        best weights, history, and why the run stopped (``stopped``). With
        ``resume=True`` training continues from it. A ``CHECKPOINT.tmp`` left
        by a killed write is removed.
    resume : bool
        Continue from ``checkpoint`` (read by :func:`load_checkpoint`: an
        unreadable file is a :class:`CheckpointError` naming it): its weights,
        optimiser moments, best model, history and epoch count. The model
        settings must be those of the checkpoint (ValueError naming each
        differing key). ``cfg.epochs`` is the new *total* (at least the epochs
        already run), so a finished run can be extended. With the checkpoint's
        ``epochs``/``lr``/schedule settings the run continues exactly as if it
        had not stopped; when they differ the schedule is re-planned: a cosine
        (or constant) schedule gives every remaining epoch the learning rate a
        run started with ``cfg`` would use at that epoch (e.g. 2 epochs, then
        ``epochs=4``: epoch 3 runs at ``(lr + lr·min_lr_ratio) / 2``), a
        plateau schedule restarts at ``cfg.lr``. ``cfg.weight_decay`` always
        applies; a changed ``batch_size``, ``dtype``, ``weight_decay``, ``grad_clip`` or
        ``ema_decay`` applies to the remaining epochs, with a note naming it. A run that had stopped early (no improvement for ``patience``
        epochs) runs no further epoch unless ``cfg.patience`` is larger (or 0):
        it returns the best model, with a note; the epochs without improvement
        are counted across the resume.
    data_sha : str
        Hash of the training + validation data; a checkpoint of other data is refused on resume.
    log : callable, optional
        Receives progress lines (main rank only); default prints to stderr.
    dist_ctx : Distributed, optional

    Returns
    -------
    TrainResult
        ``model`` holds the best (lowest validation RMSE) weights; ``history`` one record per epoch,
        numbered from 1.

    Raises
    ------
    TrainingDiverged
        (a ValueError) when an epoch's training loss or validation RMSE is not finite: nothing is
        returned, the checkpoint keeps the run up to the epoch before.
    TrainingInterrupted
        (a KeyboardInterrupt) on a second Ctrl-C/SIGTERM, or a KeyboardInterrupt where no handler could be
        installed. The first Ctrl-C (SIGINT) or SIGTERM in the main thread only stops the run at the end of
        the current epoch, like the time limit: ``stopped`` is then "interrupted" and ``signal`` the signal
        (see :class:`DeferredStop`).
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
    if checkpoint and dctx.is_main and os.path.exists(f"{checkpoint}.tmp"):
        os.remove(f"{checkpoint}.tmp")  # left by a write that was killed
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
    stopped = "epochs"
    if resume:
        if not checkpoint or not os.path.exists(checkpoint):
            raise FileNotFoundError(f"`--resume` needs an existing checkpoint, got {checkpoint!r}")
        ck = load_checkpoint(checkpoint)
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
        if cfg.patience and bad_epochs >= cfg.patience:
            # stopped early (or would have, with this patience): an unchanged run trains no further
            stopped = "early stopping"
            was = old_cfg.get("patience")
            how = ("stopped early" if ck.get("stopped", "early stopping") == "early stopping"
                   else "meets early stopping with this `patience`")
            say(f"note: the run in {checkpoint} {how} after epoch {start_epoch}: no improvement for "
                f"{bad_epochs} epochs (patience {cfg.patience}"
                + (f", was {was}" if was is not None and was != cfg.patience else "")
                + f"); no further epoch is run, the best epoch ({best_epoch + 1}) is kept. A larger `patience` "
                  "(or 0, off) continues it")
        elif start_epoch >= cfg.epochs:
            say(f"note: the run in {checkpoint} has run all {cfg.epochs} epochs; no further epoch is run, the best "
                f"epoch ({best_epoch + 1}) is kept. A larger `--epochs` continues it")
        elif changed:
            say("learning-rate schedule re-planned for "
                + ", ".join(f"{k}={getattr(cfg, k)!r} (was {old_cfg[k]!r})" for k in changed)
                + f": lr {opt.param_groups[0]['lr']:.2e} at epoch {start_epoch + 1}")
        retuned = [k for k in _RESUME_NOTED_KEYS if k in old_cfg and old_cfg[k] != getattr(cfg, k)]
        if retuned and stopped != "early stopping" and start_epoch < cfg.epochs:
            say("note: the epochs from " + str(start_epoch + 1) + " train with changed settings: "
                + ", ".join(f"{k} {getattr(cfg, k)!r} (was {old_cfg[k]!r})" for k in retuned)
                + "; the epochs before were trained with the old ones")
    n_params = sum(p.numel() for p in model.parameters())
    say(f"{model!r}\ntrain: {train.n_structures} structures / {train.n_atoms} atoms; "
        f"val: {val.n_structures} / {val.n_atoms}; world size {dctx.world}; {n_params} parameters")
    end_epoch = start_epoch if stopped == "early stopping" else cfg.epochs
    saved_epochs = start_epoch if resume else 0  # epochs the checkpoint holds
    with DeferredStop() as stop:
        epoch = start_epoch
        try:
            t_start = time.perf_counter()
            for epoch in range(start_epoch, end_epoch):
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
                    err = judged(vg_t.index_select(0, rows), vv_t.index_select(0, rows),
                                 vs_t.index_select(0, rows)) - vt_t.index_select(0, rows)
                    sums = [float(err.abs().double().sum()), float((err.double() ** 2).sum()), 3.0 * len(rows)]
                abs_sum, sq_sum, count = dctx.all_sum(sums)
                val_mae, val_rmse = abs_sum / count, math.sqrt(sq_sum / count)
                lr = opt.param_groups[0]["lr"]
                dt_epoch = time.perf_counter() - t0
                progress = (f"epoch {epoch + 1:4d}/{cfg.epochs}  loss {train_loss:.5g}  val MAE {val_mae:.4f}  "
                            f"val RMSE {val_rmse:.4f}  lr {lr:.2e}  {dt_epoch:.1f}s")
                if not (math.isfinite(train_loss) and math.isfinite(val_rmse)):  # the same on every rank
                    say(progress)
                    raise _diverged(epoch, train_loss, val_rmse, cfg, lr, best_epoch, best_val, saved_epochs,
                                    checkpoint)
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
                history.append({"epoch": epoch + 1, "train_mse": train_loss, "val_mae": val_mae,
                                "val_rmse": val_rmse, "lr": lr, "seconds": dt_epoch})
                say(progress + ("  *" if improved else ""))
                # why the run stops after this epoch (if it does): every rank decides the same
                over = bool(cfg.time_limit) and time.perf_counter() - t_start > cfg.time_limit
                n_over, n_signalled = dctx.all_sum([float(over), float(stop.requested)])
                if cfg.patience and bad_epochs >= cfg.patience:
                    stopped = "early stopping"
                elif n_signalled > 0:
                    stopped = "interrupted"
                elif n_over > 0:
                    stopped = "time limit"
                elif epoch + 1 == cfg.epochs:
                    stopped = "epochs"
                else:
                    stopped = None
                if checkpoint and dctx.is_main:
                    _save(checkpoint, {"format": _CHECKPOINT_FORMAT, "epoch": epoch, "model": model.state_dict(),
                                       "optimizer": opt.state_dict(),
                                       "ema": None if ema is None else ema.state_dict(),
                                       "scheduler": sched.state_dict(), "best_state": best_state,
                                       "best_val": best_val, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                                       "history": history, "hyperparameters": hp, "config": cfg.to_dict(),
                                       "data_hash": data_sha, "stopped": stopped})
                    saved_epochs = epoch + 1
                if stopped == "early stopping":
                    say(f"early stopping: no improvement for {bad_epochs} epochs (patience {cfg.patience}; "
                        f"best epoch {best_epoch + 1})")
                    break
                if stopped == "interrupted":
                    say(f"interrupted ({signal_name(stop.signum)}) after epoch {epoch + 1}: stopping; the best "
                        f"epoch is {best_epoch + 1}")
                    break
                if stopped == "time limit":
                    say(f"time limit of {cfg.time_limit:g} s reached after epoch {epoch + 1}")
                    break
            stopped = stopped or "epochs"
        except KeyboardInterrupt as exc:  # a second Ctrl-C, or one where no handler could be installed
            if isinstance(exc, TrainingInterrupted):
                raise
            raise _interrupted_now(stop.signum, epoch, saved_epochs, checkpoint if dctx.is_main else None) \
                from None
        signum = stop.signum
    if signum is not None and stopped == "epochs":
        stopped = "interrupted"  # the signal came after the last epoch's check; the run is complete all the same
    model.load_state_dict(best_state)
    model.eval()
    dctx.barrier()
    return TrainResult(model, history, best_epoch, best_val, stopped, signal=signum)


def _diverged(epoch, train_loss, val_rmse, cfg, lr, best_epoch, best_val, saved_epochs, checkpoint):
    """The TrainingDiverged of 0-based ``epoch``."""
    bad = [w for w, v in (("the training loss", train_loss), ("the validation RMSE", val_rmse)) if not math.isfinite(v)]
    what = " and ".join(bad) + (" are" if len(bad) > 1 else " is")
    msg = (f"training diverged in epoch {epoch + 1}: {what} not finite (loss {train_loss:.5g}, validation RMSE "
           f"{val_rmse:.5g}, lr {lr:.2e}); try a smaller `--lr` (now {cfg.lr:g})"
           + ("" if cfg.grad_clip else " or a `grad_clip` in the config") + "; no model was exported")
    if best_epoch < 0:
        msg += ": no epoch validated"
    elif checkpoint and saved_epochs:
        msg += (f"; the checkpoint {os.fspath(checkpoint)!r} keeps the run up to epoch {saved_epochs} (best epoch "
                f"{best_epoch + 1}, validation RMSE {best_val:.4g}): `--resume` with a smaller `--lr` continues it "
                "from there")
    else:
        msg += f" (the best epoch so far was {best_epoch + 1}, validation RMSE {best_val:.4g})"
    return TrainingDiverged(msg, epoch + 1, best_epoch + 1)


def _interrupted_now(signum, epoch, saved_epochs, checkpoint):
    """The TrainingInterrupted of a KeyboardInterrupt during 0-based ``epoch`` (or the setup before it)."""
    msg = f"interrupted ({signal_name(signum)}) during epoch {epoch + 1}"
    if checkpoint and saved_epochs:
        msg += (f": the checkpoint {os.fspath(checkpoint)!r} holds epochs 1-{saved_epochs}; `--resume` continues "
                "the run (and exports its best epoch's model)")
    else:
        msg += ": no epoch of this run was completed; no checkpoint was written"
    return TrainingInterrupted(msg, signum, saved_epochs)
