"""The training loop: plain CLIP training (teachers) and distillation (students), 1..N processes.

Run under torchrun for several processes: every process draws its slice of each global batch,
embeddings are all-gathered with gradients so every contrastive loss sees the global batch,
and parameter gradients are averaged, which makes N processes compute what one would.
With ``auto_inherit`` the student starts as the teacher's copy under L0 masks and is pruned to
a dense student at ``prune_step`` (``runstate``).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeclip.tokenizer import tokenize

from . import checkpoint as ckpt
from . import dist
from . import runstate as rs
from .datasets import IndexedStream, open_stream
from .evaluate import eval_images, rank0_eval_set, to_pixels, zero_shot
from .export import save_clip_dir
from .progress import Progress
from .students import logit_scale as scale_of
from .teacher_cache import TeacherFeatures, store_key


@dataclass
class TrainConfig:
    """Settings of one run (``--batch-size`` is the global batch over all processes)."""

    student: str | dict = "micro"
    out: str = "student_ckpt"
    teacher: str | None = None
    data: str = "procedural"
    losses: str = "clip=1"
    inherit: bool = False
    steps: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    mask_ratio: float = 0.75
    affinity_alpha: float = 1.0
    affinity_scale: float | str = 50.0
    clipkd_variant: str = "paper"  # "paper" or "released" formulas of ICL, AFD, GD
    auto_inherit: bool = False  # TinyCLIP automatic inheritance: L0 masks on the teacher's copy
    start_from: str | None = None  # auto-inherit from these weights instead (progressive stages)
    target_sparsity: float = 0.5  # of the encoder layers' parameters, both towers jointly
    prune_step: int | None = None  # default: steps // 2
    sparsity_warmup: float = 0.5  # fraction of prune_step over which the target rises from 0
    sparsity_penalty: str = "two-sided"  # or TinyCLIP's released "one-sided"
    mask_lr: float = 0.1
    lambda_lr: float = 0.1
    mask_kinds: str = "hidden,heads,mlp"  # and "layers" for whole attention / MLP blocks
    prune_layout: str = "per-layer"  # or "uniform" (see prune.py)
    procedural_size: int = 60_000
    procedural_seed: int = 0
    eval_every: int = 0
    eval_held_out: int = 200
    eval_seen: int = 20
    checkpoint_every: int = 0
    resume: bool = False
    stop_after: int | None = None  # stop early (a checkpoint is written), e.g. to split a run
    progress: bool = True
    dist_timeout: float = 120.0
    teacher_cache_dir: str | None = None  # keep teacher embeddings of indexed sources here
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # paths may come as pathlib.Path; the run's settings are written as JSON
        for name in ("out", "teacher", "data", "start_from", "teacher_cache_dir"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))


def _prefetch(stream, depth: int = 2):
    """Yield ``(images, captions, indices, stream_state_after)`` from a background thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():  # time out regularly so an abandoned producer ends
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            while put((*stream.next_batch(), stream.state())):
                pass
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class _Tokens:
    """Tokenised captions, memoised (procedural captions repeat, and BPE is the slow part)."""

    def __init__(self, context_length: int, limit: int = 200_000):
        self.ctx, self.limit, self.memo = context_length, limit, {}

    def __call__(self, caps: list[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(caps) if c not in self.memo]
        if new:
            if len(self.memo) + len(new) > self.limit:
                self.memo.clear()
            self.memo.update(zip(new, tokenize(new, self.ctx)))
        return torch.from_numpy(np.stack([self.memo[c] for c in caps]))


def train(cfg: TrainConfig, teacher_cache: dict | None = None) -> dict:
    """Run ``cfg``; returns a summary (output folder, final evaluation, timings).

    ``teacher_cache`` (a dict) lets several runs on the same data share teacher embeddings.
    """
    rank, world, device = dist.init(cfg.dist_timeout)
    try:
        return _train(cfg, rank, world, device, teacher_cache)
    except (RuntimeError, ConnectionError) as e:
        if world > 1 and dist.is_peer_failure(e):
            raise dist.DistributedError(
                f"process {rank} of {world}: another process failed or stopped responding ({e}); stopping too"
            ) from e
        raise


@dataclass
class _Loop:
    """Per-run loop context: what the step, logging and checkpoint helpers share."""

    cfg: TrainConfig
    run: rs.Run
    rank: int
    world: int
    arch: dict
    ident: dict
    out: Path
    tfeat: TeacherFeatures | None
    tok: _Tokens
    ev: dict | None
    amp: torch.dtype | None
    stream_state: dict = field(default_factory=dict)
    evals: list = field(default_factory=list)
    seen: int = 0
    skipped: int = 0  # unreadable items, all processes together
    t0: float = 0.0


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, teacher_cache) -> dict:
    rs.validate(cfg)
    run, arch = rs.build(cfg, device)
    stream = open_stream(
        cfg.data, cfg.batch_size, rank, world, image_size=arch["image_size"], seed=cfg.seed,
        procedural_size=cfg.procedural_size, procedural_seed=cfg.procedural_seed,
    )  # fmt: skip
    info = {**asdict(cfg), "student_arch": arch, "world_size": world,
            "teacher_digest": ckpt.file_digest(cfg.teacher), "start_from_digest": ckpt.file_digest(cfg.start_from),
            "prune_step": rs.prune_step_of(cfg)
            if cfg.auto_inherit else None}  # fmt: skip
    loop = _Loop(
        cfg=cfg, run=run, rank=rank, world=world, arch=arch, ident=ckpt.identity(info),
        out=Path(cfg.out), tok=_Tokens(arch["context_length"]), amp=dist.autocast_dtype(device),
        tfeat=_teacher_features(cfg, run, stream, arch, info["teacher_digest"], teacher_cache),
        ev=rank0_eval_set(cfg, rank, arch["image_size"]),
    )  # fmt: skip
    start = _resume(loop, stream) if cfg.resume else 0
    if rank == 0:
        loop.out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "edgeclip_distill.json"):  # an earlier run's export: the
            (loop.out / name).unlink(missing_ok=True)  # folder is not a finished model until ours
        if cfg.resume:
            ckpt.trim_log(loop.out / "train_log.jsonl", start)
        else:
            (loop.out / "train_log.jsonl").write_text("")
    done = _loop(loop, stream, start)
    if loop.tfeat is not None:
        loop.tfeat.gather(run.device)  # every process's, for rank 0's save and the count
    result = {"out": str(loop.out), "steps": done, "elapsed_s": time.perf_counter() - loop.t0,
              "skipped": loop.skipped}  # fmt: skip
    if loop.run.teacher is not None:  # teacher forwards this run needed (0 with a warm cache)
        result["teacher_items_computed"] = loop.tfeat.computed if loop.tfeat else 0
    if done < cfg.steps:  # stopped early: the checkpoint is the output
        dist.wait_for_rank0(dist.final_wait_s(cfg.dist_timeout, 0, _rate(loop), 0))
        return result
    return _finish(loop, info, result)


def _teacher_features(cfg: TrainConfig, run: rs.Run, stream, arch: dict, digest, shared):
    """Teacher embeddings, stored per item for indexed sources (and on disk with a cache folder).

    ``None`` when no loss reads them (``clip=1`` with a teacher for inheritance): such a run
    makes no teacher forward at all, so its time is a plain student's."""
    if run.teacher is None or not [k for k in run.loss_mod.weights if k != "clip"]:
        return None
    indexed = isinstance(stream, IndexedStream)
    key = store_key(digest, cfg.data, cfg.procedural_size, cfg.procedural_seed,
                    arch["image_size"], arch["context_length"])  # fmt: skip
    disk = Path(cfg.teacher_cache_dir) / f"{key}.pt" if cfg.teacher_cache_dir and indexed else None
    return TeacherFeatures(run.teacher, len(stream.source) if indexed else None, key, shared, disk)


def _resume(loop: _Loop, stream) -> int:
    state = ckpt.load(loop.out / ckpt.CKPT_NAME, loop.ident)
    rs.restore(loop.run, state)
    torch.set_rng_state(state["torch_rng"])
    stream.load_state(state["streams"][loop.rank])
    return state["step"]


def _loop(loop: _Loop, stream, start: int) -> int:
    cfg, run = loop.cfg, loop.run
    prune_at = rs.prune_step_of(cfg) if cfg.auto_inherit else None
    bar = None
    if loop.rank == 0 and cfg.progress:
        bar = Progress(cfg.steps, start, "distill" if loop.tfeat is not None else "train")
    batches = _prefetch(stream)
    loop.t0, loop.stream_state = time.perf_counter(), stream.state()
    loop.skipped = dist.total(loop.stream_state["skipped"], run.device)
    done = start
    try:
        for step in range(start, cfg.steps):
            if run.phase == "masked" and step == prune_at:
                rs.prune_now(run)
            imgs, caps, idx, loop.stream_state = next(batches)
            loop.skipped = dist.total(loop.stream_state["skipped"], run.device)  # every process's
            total, parts, gnorm, extra = _train_step(loop, step, imgs, caps, idx)
            done = step + 1
            loop.seen += cfg.batch_size
            with _eval_wait(loop, done):
                if loop.rank == 0:
                    _log_step(loop, done, total, parts, gnorm, extra, bar)
            stopping = cfg.stop_after is not None and done >= cfg.stop_after
            _maybe_checkpoint(
                loop, done, stopping or (cfg.checkpoint_every > 0 and done == prune_at)
            )
            if stopping:
                break
        if run.phase == "masked" and done == cfg.steps:  # prune step == last step
            rs.prune_now(run)
    finally:
        batches.close()  # stops the producer thread
        if bar is not None:
            bar.close()
    return done


def _train_step(loop: _Loop, step: int, imgs, caps, idx):
    """One optimiser step on the global batch; returns ``(loss, parts, grad norm, extra log)``."""
    cfg, run = loop.cfg, loop.run
    device = run.device
    pixels, ids = to_pixels(imgs, device), loop.tok(caps).to(device)
    ti = tt = None
    if loop.tfeat is not None:
        ti, tt = loop.tfeat(idx, pixels, ids)
    enc_img, enc_txt = run.encoders(step)
    amp = torch.autocast(device.type, dtype=loop.amp) if loop.amp is not None else nullcontext()
    with amp:
        si, st = enc_img(pixels), enc_txt(ids)
        sim = (
            enc_img(pixels, cfg.mask_ratio, _mfd_noise(loop, step, pixels))
            if "mfd" in run.loss_mod.weights
            else None
        )
    g_si, g_st, g_sim = (dist.gather(x.float()) if x is not None else None for x in (si, st, sim))
    g_ti, g_tt = dist.gather(ti, with_grad=False), dist.gather(tt, with_grad=False)
    t_scale = loop.tfeat.scale if loop.tfeat else None
    total, parts = run.loss_mod(g_si, g_st, scale_of(run.model), g_ti, g_tt, t_scale, g_sim)
    extra: dict = {}
    if run.phase == "masked":
        penalty, extra = run.student.penalty(step)
        parts["lagrangian"] = penalty
        total = total + penalty
    run.opt.zero_grad(set_to_none=True)
    total.backward()
    dist.average_gradients(run.params)
    gnorm = (
        torch.nn.utils.clip_grad_norm_(run.clipped, cfg.grad_clip)
        if cfg.grad_clip > 0
        else torch.tensor(0.0)
    )
    run.opt.step()
    run.sched.step()
    rs.clamp_after_step(run)
    return total, parts, gnorm, extra


def _mfd_noise(loop: _Loop, step: int, pixels) -> torch.Tensor:
    # The mask noise of the whole global batch comes from (seed, step), so N processes mask
    # each image exactly as one process would.
    cfg, local = loop.cfg, loop.cfg.batch_size // loop.world
    n_patches = (loop.arch["image_size"] // loop.arch["patch_size"]) ** 2
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.rand(cfg.batch_size, n_patches, generator=g)[
        loop.rank * local : (loop.rank + 1) * local
    ]


def _rate(loop: _Loop) -> float:
    """Training samples per second on this process so far."""
    elapsed = time.perf_counter() - loop.t0
    return loop.seen / loop.world / elapsed if elapsed > 0 and loop.seen else 0.0


def _eval_wait(loop: _Loop, done: int):
    """While rank 0 evaluates mid-run, the others wait for it with a timeout sized to that."""
    cfg = loop.cfg
    if not (cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps)):
        return nullcontext()
    return dist.rank0_alone(dist.final_wait_s(cfg.dist_timeout, eval_images(cfg), _rate(loop), 0))


def _log_step(loop: _Loop, done: int, total, parts, gnorm, extra: dict, bar) -> None:
    cfg, run = loop.cfg, loop.run
    rec = {
        "step": done, "loss": total.item(), "parts": {k: v.item() for k, v in parts.items()},
        "lr": run.sched.get_last_lr()[0], "logit_scale": scale_of(run.model).item(), "grad_norm": gnorm.item(),
        "samples_per_s": loop.seen / (time.perf_counter() - loop.t0), "skipped": loop.skipped,
        "phase": run.phase, **extra,
    }  # fmt: skip
    if loop.ev is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
        rec["eval"] = zero_shot(run.eval_model(), loop.ev, run.device)
        loop.evals.append({"step": done, **rec["eval"]})
    with open(loop.out / "train_log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    if bar is not None:
        shown = {"loss": f"{rec['loss']:.3f}"}
        if "expected_sparsity" in extra:
            shown["sparsity"] = f"{extra['expected_sparsity']:.3f}"
        if "eval" in rec:
            shown["held_out"] = f"{rec['eval']['held_out']:.1f}"
        bar.update(1, **shown)


def _maybe_checkpoint(loop: _Loop, done: int, force: bool) -> None:
    cfg = loop.cfg
    every = cfg.checkpoint_every
    if not (force or (every and (done % every == 0 or done == cfg.steps))):
        return
    streams = dist.all_gather_object(loop.stream_state)
    if loop.rank == 0:  # written atomically: a crash never leaves half a checkpoint
        state = {"identity": loop.ident, "step": done, "torch_rng": torch.get_rng_state(), "streams": streams,
                 **rs.checkpoint_state(loop.run)}  # fmt: skip
        ckpt.save(loop.out / ckpt.CKPT_NAME, state)


def _finish(loop: _Loop, info: dict, result: dict) -> dict:
    """Rank 0 evaluates and exports while the others wait (with a timeout sized to it)."""
    cfg, run = loop.cfg, loop.run
    n_eval = eval_images(cfg) * (2 if run.teacher is not None else 1)
    n_params = sum(p.numel() for p in run.model.parameters())
    with dist.rank0_alone(dist.final_wait_s(cfg.dist_timeout, n_eval, _rate(loop), n_params)):
        if loop.rank == 0:
            _evaluate_and_export(loop, info, result)
    return result


def _evaluate_and_export(loop: _Loop, info: dict, result: dict) -> None:
    cfg, run = loop.cfg, loop.run
    model = run.model
    if loop.evals and loop.evals[-1]["step"] == cfg.steps:
        result["eval"] = {k: v for k, v in loop.evals[-1].items() if k != "step"}
    elif loop.ev is not None:
        result["eval"] = zero_shot(model, loop.ev, run.device)
    if run.teacher is not None and loop.ev is not None:
        result["teacher_eval"] = zero_shot(run.teacher, loop.ev, run.device)
    if run.prune_report is not None:
        result["pruning"] = run.prune_report
    extra = {"config": {k: v for k, v in info.items() if k != "extra"}, "result": result, **cfg.extra}
    save_clip_dir(model.float().cpu(), loop.out, extra)
    if loop.tfeat is not None:
        loop.tfeat.save()
