"""The training loop: plain CLIP training (teachers) and distillation (students), 1..N processes.

Run under torchrun for several processes: every process draws its slice of each global batch,
embeddings are all-gathered with gradients so every contrastive loss sees the global batch,
and parameter gradients are averaged, which makes N processes compute what one would.
"""

from __future__ import annotations

import json
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeclip.errors import InputError
from edgeclip.tokenizer import tokenize

from . import checkpoint as ckpt
from . import dist
from .datasets import IndexedStream, open_stream
from .evaluate import to_pixels, zero_shot
from .export import save_clip_dir
from .losses import DistillLoss, parse_losses
from .procedural import eval_set
from .students import (
    arch_of,
    build_model,
    encode_image,
    encode_text,
    inherit_weights,
    load_arch,
    load_model,
)
from .students import logit_scale as scale_of


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
    procedural_size: int = 60_000
    procedural_seed: int = 0
    eval_every: int = 0
    eval_held_out: int = 200
    eval_seen: int = 20
    checkpoint_every: int = 0
    resume: bool = False
    stop_after: int | None = (
        None  # stop early (a checkpoint is written), e.g. to split a run in parts
    )
    progress: bool = True
    dist_timeout: float = 120.0
    extra: dict = field(default_factory=dict)


def _lr_lambda(steps: int, warmup: float):
    warm = max(1, int(round(warmup * steps)))

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (s - warm) / max(1, steps - warm))))

    return f


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


class _TeacherFeatures:
    """Frozen teacher embeddings (normalised), cached per source index when the source has one."""

    def __init__(self, teacher, cache: dict | None):
        self.teacher = teacher
        self.cache = cache if cache is not None else {}
        self.scale = scale_of(teacher).detach()

    @torch.no_grad()
    def __call__(self, idx, pixels, ids):
        keys = [int(i) for i in idx]
        if all(k >= 0 and k in self.cache for k in keys):
            ti, tt = zip(*(self.cache[k] for k in keys))
            return torch.stack(ti).to(pixels.device), torch.stack(tt).to(pixels.device)
        ti = torch.nn.functional.normalize(encode_image(self.teacher, pixels).float(), dim=-1)
        tt = torch.nn.functional.normalize(encode_text(self.teacher, ids).float(), dim=-1)
        for k, a, b in zip(keys, ti.cpu(), tt.cpu()):
            if k >= 0:
                self.cache[k] = (a, b)
        return ti, tt


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


def _train(cfg: TrainConfig, rank: int, world: int, device: torch.device, teacher_cache) -> dict:
    weights = parse_losses(cfg.losses)
    arch = load_arch(cfg.student)
    if cfg.steps <= 0 or cfg.batch_size <= 1:
        raise InputError(
            f"--steps must be > 0 and --batch-size > 1 (got {cfg.steps}, {cfg.batch_size})"
        )
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    student = build_model(arch).to(device).train()
    teacher = None
    if cfg.teacher:
        teacher = load_model(cfg.teacher).to(device).eval().requires_grad_(False)
        t_arch = arch_of(teacher)
        if (t_arch["image_size"], t_arch["vocab_size"]) != (arch["image_size"], arch["vocab_size"]):
            raise InputError(
                f"teacher image size/vocab {t_arch['image_size']}/{t_arch['vocab_size']} differ from the "
                f"student's {arch['image_size']}/{arch['vocab_size']}; pick a student with the teacher's"
            )
        if cfg.inherit:
            inherit_weights(student, teacher)
    elif cfg.inherit:
        raise InputError("--inherit needs --teacher")
    t_dim = teacher.config.projection_dim if teacher is not None else None
    loss_mod = DistillLoss(
        weights,
        arch["embed_dim"],
        t_dim,
        affinity_alpha=cfg.affinity_alpha,
        affinity_scale=cfg.affinity_scale,
    ).to(device)
    named = [
        (n, p)
        for n, p in [*student.named_parameters(), *loss_mod.named_parameters()]
        if p.requires_grad
    ]
    params = [p for _, p in named]
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]  # biases, norms, logit scales
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.steps, cfg.warmup))
    stream = open_stream(
        cfg.data, cfg.batch_size, rank, world, image_size=arch["image_size"], seed=cfg.seed,
        procedural_size=cfg.procedural_size, procedural_seed=cfg.procedural_seed,
    )  # fmt: skip
    info = {
        **asdict(cfg),
        "student_arch": arch,
        "world_size": world,
        "teacher_digest": ckpt.file_digest(cfg.teacher),
    }
    ident = ckpt.identity(info)
    start = 0
    if cfg.resume:
        state = ckpt.load(out / ckpt.CKPT_NAME, ident)
        student.load_state_dict(state["student"])
        loss_mod.load_state_dict(state["loss"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        stream.load_state(state["streams"][rank])
        start = state["step"]
    tfeat = (
        _TeacherFeatures(teacher, teacher_cache if isinstance(stream, IndexedStream) else None)
        if teacher
        else None
    )
    ev = None
    if cfg.eval_every or cfg.data == "procedural":
        ev = eval_set(cfg.eval_held_out, cfg.eval_seen, image_size=arch["image_size"])
    tok = _Tokens(arch["context_length"])
    use_amp = device.type == "cuda"
    n_patches = (arch["image_size"] // arch["patch_size"]) ** 2
    local = cfg.batch_size // world
    log_path = out / "train_log.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            log_path.write_text("")
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=cfg.steps, initial=start, desc="distill" if teacher else "train", unit="step"
        )
    batches = _prefetch(stream)
    t0, seen, evals = time.perf_counter(), 0, []
    stream_state = stream.state()
    done = start
    for step in range(start, cfg.steps):
        imgs, caps, idx, stream_state = next(batches)
        pixels = to_pixels(imgs, device)
        ids = tok(caps).to(device)
        ti = tt = None
        if tfeat is not None:
            ti, tt = tfeat(idx, pixels, ids)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            si, st = encode_image(student, pixels), encode_text(student, ids)
            sim = None
            if "mfd" in loss_mod.weights:
                # The mask noise of the whole global batch comes from (seed, step), so N processes
                # mask each image exactly as one process would.
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                noise = torch.rand(cfg.batch_size, n_patches, generator=g)[
                    rank * local : (rank + 1) * local
                ]
                sim = encode_image(student, pixels, cfg.mask_ratio, noise=noise)
        g_si, g_st, g_sim = (
            dist.gather(x.float()) if x is not None else None for x in (si, st, sim)
        )
        g_ti, g_tt = dist.gather(ti, with_grad=False), dist.gather(tt, with_grad=False)
        total, parts = loss_mod(
            g_si, g_st, scale_of(student), g_ti, g_tt, tfeat.scale if tfeat else None, g_sim
        )
        opt.zero_grad(set_to_none=True)
        total.backward()
        dist.average_gradients(params)
        gnorm = (
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if cfg.grad_clip > 0
            else torch.tensor(0.0)
        )
        opt.step()
        sched.step()
        seen += cfg.batch_size
        done = step + 1
        if rank == 0:
            rec = {
                "step": done, "loss": total.item(), "parts": {k: v.item() for k, v in parts.items()},
                "lr": sched.get_last_lr()[0], "logit_scale": scale_of(student).item(), "grad_norm": gnorm.item(),
                "samples_per_s": seen / (time.perf_counter() - t0), "skipped": stream_state["skipped"],
            }  # fmt: skip
            if (
                ev is not None
                and cfg.eval_every
                and (done % cfg.eval_every == 0 or done == cfg.steps)
            ):
                rec["eval"] = zero_shot(student, ev, device)
                evals.append({"step": done, **rec["eval"]})
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{rec['loss']:.3f}",
                    **({"held_out": f"{rec['eval']['held_out']:.1f}"} if "eval" in rec else {}),
                )
        stopping = cfg.stop_after is not None and done >= cfg.stop_after
        if (cfg.checkpoint_every or stopping) and (
            stopping or done % cfg.checkpoint_every == 0 or done == cfg.steps
        ):
            streams = dist.all_gather_object(stream_state)
            if rank == 0:
                ckpt.save(out / ckpt.CKPT_NAME, {
                    "identity": ident, "step": done, "student": student.state_dict(), "loss": loss_mod.state_dict(),
                    "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "torch_rng": torch.get_rng_state(), "streams": streams,
                })  # fmt: skip
        if stopping:
            break
    batches.close()  # stops the producer thread
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    result = {
        "out": str(out),
        "steps": done,
        "elapsed_s": elapsed,
        "skipped": stream_state["skipped"],
    }
    if done < cfg.steps:  # stopped early: the checkpoint is the output
        dist.barrier()
        return result
    if rank == 0:
        if evals and evals[-1]["step"] == cfg.steps:
            result["eval"] = {k: v for k, v in evals[-1].items() if k != "step"}
        elif ev is not None:
            result["eval"] = zero_shot(student, ev, device)
        if teacher is not None and ev is not None:
            result["teacher_eval"] = zero_shot(teacher, ev, device)
        extra = {
            "config": {k: v for k, v in info.items() if k != "extra"},
            "result": result,
            **cfg.extra,
        }
        save_clip_dir(student.float().cpu(), out, extra)
    dist.barrier()
    return result
