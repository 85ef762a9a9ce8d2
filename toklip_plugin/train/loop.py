"""The TokLIP training loop (paper Section 3.1): only the code mapping and the token encoder learn.

One process per device, started by ``torchrun`` (or plainly, for one device). The student
(TokLIP) is wrapped in DDP, or FSDP for the So400m configs; the VQ tokenizer, the text tower
and the teacher are frozen, in eval mode and outside the optimizer. A step is: VQ codes (or
cached codes) -> semantic tokens -> pooled embedding; frozen text embedding; frozen teacher
targets at the teacher's resolution; loss; backward over ``accum_steps`` micro-batches; clip;
AdamW; cosine schedule with warmup. Checkpoints hold everything a resume needs to reproduce
the uninterrupted run: trainable weights, optimizer, scheduler, scaler, step, data position and
RNG state.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from tqdm import tqdm

from ..checkpoints import (init_from_siglip2, load_state_dict_strict, load_vq_checkpoint, resolve_weight_file,
                           safe_load, unwrap_state_dict)
from ..factory import create_model, get_tokenizer
from ..models.toklip import TokLIP
from ..transforms import image_transform
from .checkpointing import export_model, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import StreamPosition, build_loader
from .evaluate import cache_evaluator
from .losses import TokLIPLoss
from .teacher import SigLIPTeacher, build_teacher
from .text_cache import TextEmbeddingCache

__all__ = ["DistEnv", "init_distributed", "build_student", "Trainer", "cosine_with_warmup"]

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU)."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank, world_size, target)


def build_student(config: TrainConfig, teacher: Optional[SigLIPTeacher]) -> TokLIP:
    """The TokLIP student: initialised as the config says, frozen parts frozen."""
    model = create_model(config.model_config(), seed=config.run.seed)
    vq_source = config.model.vq_checkpoint
    if vq_source == "released":
        vq_source = resolve_weight_file(model.config.weights["vq_checkpoint"])
    if vq_source:
        load_vq_checkpoint(model.vq, vq_source)
    if config.model.init:
        init_from_siglip2(model, _encoder_weights(_init_source(config.model.init, teacher)))
    if config.model.text_init:
        state = _init_source(config.model.text_init, teacher)
        load_state_dict_strict(model.text, {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")},
                               f"the text tower of {model.config.name} from {config.model.text_init}")
        with torch.no_grad():
            for name in ("logit_scale", "logit_bias"):
                if name in state:
                    getattr(model, name).copy_(state[name])
    model.requires_grad_(False)
    model.encoder.requires_grad_(True)
    learn_logits = config.loss.contrastive != "none"
    model.logit_scale.requires_grad_(learn_logits)
    model.logit_bias.requires_grad_(learn_logits and config.loss.contrastive == "sigmoid")
    return model


def _init_source(source: str, teacher: Optional[SigLIPTeacher]) -> dict[str, torch.Tensor]:
    """SigLIP2 weights to initialise from: the teacher's (open_clip layout) or a file's."""
    return teacher.state_dict() if source == "teacher" else unwrap_state_dict(safe_load(source))


def _encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vision part of a SigLIP2 state dict (text and logit weights have their own option, text_init)."""
    return {k: v for k, v in state.items() if not k.startswith(("text.", "logit_scale", "logit_bias"))}


class StudentForward(nn.Module):
    """What DDP / FSDP wrap, the trainable path: codes -> (pooled embedding, semantic tokens).

    ``train()`` keeps the frozen VQ and text tower in eval mode.
    """

    def __init__(self, model: TokLIP):
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model.encode_codes(codes)
        return self.model.pool_tokens(tokens), tokens

    def train(self, mode: bool = True) -> "StudentForward":
        super().train(mode)
        self.model.vq.eval()
        self.model.text.eval()
        return self


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, position embedding and logit scale/bias (as timm, open_clip)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "pos_embed" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    """Builds everything from a :class:`TrainConfig`, resumes from the newest checkpoint, trains.

    ``eval_fn(model) -> {name: value}`` runs every ``run.eval_every`` steps on rank 0; by default it
    is the zero-shot / retrieval evaluation of the held-out cache ``run.eval_data``.
    """

    def __init__(self, config: TrainConfig, env: Optional[DistEnv] = None,
                 eval_fn: Optional[Callable[[TokLIP], dict[str, float]]] = None):
        self.config = config
        self.env = env or init_distributed(config.run.device)
        self.eval_fn = eval_fn or (cache_evaluator(config.run.eval_data) if config.run.eval_data else None)
        self.out = Path(config.run.output_dir)
        model_config = config.model_config()
        self.teacher = (build_teacher(config.teacher, model_config, config.run.seed).to(self.env.device)
                        if config.uses_teacher else None)
        self.model = build_student(config, self.teacher).to(self.env.device)
        torch.manual_seed(config.run.seed + self.env.rank)
        if config.run.grad_checkpointing:
            self.model.encoder.set_grad_checkpointing(True)
        self._replicated: list[nn.Parameter] = []  # parameters outside FSDP's sharding (see _wrap)
        self.wrapped = self._wrap(StudentForward(self.model))
        if self.eval_fn and config.run.eval_every and self.sharded:
            raise ValueError("run.eval_every evaluates the whole student on rank 0, but FSDP shards it; evaluate "
                             "the exported checkpoints instead (run.eval_every=0), or use run.distributed=ddp")
        self.loss = TokLIPLoss(config.loss, self.env.rank, self.env.world_size)
        optim = config.optim
        self.optimizer = torch.optim.AdamW(_param_groups(self.wrapped, optim.weight_decay), lr=optim.lr,
                                           betas=optim.betas, eps=optim.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: cosine_with_warmup(s, optim.warmup_steps, optim.steps))
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=config.run.precision == "fp16")
        self.step, self.skipped = 0, 0
        # the text tower is frozen, so a caption's embedding never changes: encode each one once
        self.text_cache = TextEmbeddingCache(config.run.text_cache_size) if config.run.text_cache_size else None

    # setup -------------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """Whether FSDP shards the student's parameters over the ranks."""
        return self.env.world_size > 1 and self.config.run.distributed == "fsdp"

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.env.world_size == 1:
            return module
        device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
        if self.config.run.distributed == "ddp":
            return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        from timm.models.vision_transformer import Block
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        # FSDP shards the token encoder; the frozen VQ / text tower and the scalar logit parameters
        # (FSDP cannot shard 0-d tensors) stay whole on every rank, their gradients averaged by hand.
        model = module.model
        ignored = [*model.vq.parameters(), *model.text.parameters(), model.logit_scale, model.logit_bias]
        self._replicated = [p for p in (model.logit_scale, model.logit_bias) if p.requires_grad]
        return FullyShardedDataParallel(module, auto_wrap_policy=ModuleWrapPolicy({Block}), use_orig_params=True,
                                        ignored_states=ignored, device_id=self.env.device)

    def _average_replicated_grads(self) -> None:
        for param in self._replicated:
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad /= self.env.world_size

    @property
    def local_batch_size(self) -> int:
        optim, world = self.config.optim, self.env.world_size
        per_step = optim.batch_size // optim.accum_steps
        if per_step % world:
            raise ValueError(f"optim.batch_size {optim.batch_size} / accum_steps {optim.accum_steps} = {per_step} "
                             f"is not divisible by the {world} ranks; pick a batch size that is")
        return per_step // world

    def _loader(self) -> Iterator[dict[str, torch.Tensor]]:
        position = StreamPosition(self.env.rank, self.env.world_size, self.step * self.config.optim.accum_steps)
        model_config = self.model.config
        images = self.config.data.kind != "cache"  # a cache holds tensors: no image decoding, no tokenizer
        transform = image_transform(model_config.image_size) if images else None
        tokenizer = get_tokenizer(model_config) if images else None
        return iter(build_loader(self.config.data, transform, tokenizer, self.local_batch_size, position,
                                 self.config.run.seed))

    # checkpoints -------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.wrapped, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        rng = [None] * self.env.world_size
        local_rng = {"cpu": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state() if self.env.device.type == "cuda" else None}
        if self.env.world_size > 1:
            dist.all_gather_object(rng, local_rng)
        else:
            rng = [local_rng]
        return {"step": self.step, "model": model_sd, "optimizer": optim_sd,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "data": {"batches": self.step * self.config.optim.accum_steps, "skipped": self.skipped},
                "rng": rng, "world_size": self.env.world_size, "config": self.config.to_dict()}

    def save(self) -> None:
        state = self._state()  # every rank takes part in gathering the state
        if self.env.is_main:
            save_checkpoint(self.out / "checkpoints", self.step, state, self.config.run.keep_last)
        self._barrier()

    def resume(self, path: Optional[Path] = None) -> bool:
        """Load ``path`` or the newest checkpoint in ``output_dir``; False when there is none."""
        path = path or latest_checkpoint(self.out / "checkpoints")
        if path is None:
            return False
        state = load_checkpoint(path)
        set_state_dict(self.wrapped, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True, strict=False))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.skipped = state["step"], state["data"]["skipped"]
        if state["world_size"] != self.env.world_size:
            raise ValueError(f"checkpoint {path} was written by {state['world_size']} ranks, this run has "
                             f"{self.env.world_size}; resume with the same number of processes")
        rng = state["rng"][self.env.rank]
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and self.env.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
        return True

    def _barrier(self) -> None:
        if self.env.world_size > 1:
            dist.barrier()

    # one optimisation step ---------------------------------------------------------------------
    @torch.no_grad()
    def _frozen_inputs(self, batch: dict[str, torch.Tensor], host_text: torch.Tensor
                       ) -> dict[str, Optional[torch.Tensor]]:
        """Codes, text embedding and teacher targets: taken from the batch when cached there
        (``codes``, ``text_emb``, ``teacher_pooled``, ``teacher_tokens``), else computed by the frozen parts;
        ``host_text`` is the host copy of ``batch["text"]`` (the text cache's keys)."""
        text_emb = batch.get("text_emb")
        if text_emb is None:
            with self._autocast():
                text_emb = (self.text_cache(host_text, self._encode_text) if self.text_cache
                            else self.model.encode_text(batch["text"]))
        return {**self.image_targets(batch), "text_emb": text_emb}

    @torch.no_grad()
    def image_targets(self, batch: dict[str, torch.Tensor]) -> dict[str, Optional[torch.Tensor]]:
        """``codes`` and, when the loss distils, the teacher's ``teacher_emb`` / ``teacher_tokens``: from the
        batch when cached there, else from its ``images`` through the frozen VQ and teacher (``None``: unused)."""
        cfg = self.config.loss
        out = {"codes": batch.get("codes"), "teacher_emb": batch.get("teacher_pooled"),
               "teacher_tokens": batch.get("teacher_tokens")}
        if out["codes"] is None:
            out["codes"] = self.model.tokenize(batch["images"])
        if ((cfg.distill_weight > 0 and out["teacher_emb"] is None)
                or (cfg.token_distill_weight > 0 and out["teacher_tokens"] is None)):
            with self._autocast():
                out["teacher_emb"], out["teacher_tokens"] = self.teacher.image_features(batch["images"])
        return out

    def _encode_text(self, host_text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(host_text.to(self.env.device, non_blocking=True))

    def _autocast(self):
        dtype = _AMP_DTYPES.get(self.config.run.precision)
        return torch.autocast(self.env.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over ``accum_steps`` micro-batches; the metrics reach the host once, at the end."""
        accum = self.config.optim.accum_steps
        totals: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            host = next(batches)
            self.skipped += int(host.pop("skipped"))  # still on the host: no device sync
            batch = {k: v.to(self.env.device, non_blocking=True) for k, v in host.items()}
            frozen = self._frozen_inputs(batch, host["text"])
            sync = micro == accum - 1 or not hasattr(self.wrapped, "no_sync")
            with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), self._autocast():
                pooled, tokens = self.wrapped(frozen["codes"])
                terms = self.loss(pooled, frozen["text_emb"], self.model.logit_scale, self.model.logit_bias,
                                  tokens, frozen["teacher_emb"], frozen["teacher_tokens"])
            self.scaler.scale(terms["total"] / accum).backward()
            for name, value in terms.items():  # float64, as Python floats would sum them
                totals[name] = totals.get(name, 0.0) + value.detach().double() / accum
        self._average_replicated_grads()
        self.scaler.unscale_(self.optimizer)
        if self.config.optim.grad_clip:
            totals["grad_norm"] = self._clip(self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        return {**self._to_host(totals), "lr": lr}

    def _clip(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm: over shards summed across ranks under FSDP, plus the replicated
        parameters counted once, so that it equals the norm of a single process."""
        replicated = {id(p) for p in self._replicated}
        params = [p for p in self.wrapped.parameters() if p.grad is not None and id(p) not in replicated]
        if not self.sharded:  # DDP / one process: every rank holds the whole, averaged gradient
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        sharded = torch.stack([p.grad.float().pow(2).sum() for p in params]).sum()
        dist.all_reduce(sharded)
        total = sharded + sum(p.grad.float().pow(2).sum() for p in self._replicated if p.grad is not None)
        norm = total.sqrt()
        scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for p in params + [p for p in self._replicated if p.grad is not None]:
            p.grad.mul_(scale)
        return norm

    def _to_host(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means over ranks of the step's metrics, plus ``skipped_total`` (the samples every rank skipped so
        far), reduced in one collective and copied to the host in one transfer: the step's only sync."""
        keys = sorted(values)
        stacked = torch.stack([values[k].double() for k in keys]
                              + [torch.tensor(float(self.skipped), dtype=torch.float64, device=self.env.device)])
        if self.env.world_size > 1:
            dist.all_reduce(stacked)
        *sums, skipped = stacked.tolist()
        return {**{k: v / self.env.world_size for k, v in zip(keys, sums)}, "skipped_total": int(skipped)}

    # the run -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train to ``optim.steps`` (resuming if a checkpoint exists), save, export; the last metrics."""
        run = self.config.run
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.config.save(self.out / "config.yaml")
        resumed = self.resume()
        self.wrapped.train()
        logger = _MetricLogger(self.out, run.tensorboard and self.env.is_main, run.wandb and self.env.is_main,
                               self.config) if self.env.is_main else None
        batches, metrics = self._loader(), {}
        images_per_step = self.config.optim.batch_size
        bar = tqdm(total=self.config.optim.steps, initial=self.step, disable=not self.env.is_main,
                   desc="resumed" if resumed else "train", dynamic_ncols=True)
        while self.step < self.config.optim.steps:
            start = time.perf_counter()
            metrics = self.train_step(batches)
            metrics["images_per_s"] = images_per_step / (time.perf_counter() - start)
            if self.eval_fn and run.eval_every and self.step % run.eval_every == 0 and self.env.is_main:
                metrics.update(self.eval_fn(self.model))
            if logger and (self.step % run.log_every == 0 or self.step == self.config.optim.steps):
                logger.log(self.step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['total']:.4f}", lr=f"{metrics['lr']:.2e}",
                            img_s=f"{metrics['images_per_s']:.0f}", skipped=metrics["skipped_total"])
            if self.step % run.save_every == 0 or self.step == self.config.optim.steps:
                self.save()
        bar.close()
        skipped = self._total_skipped()
        self.export(self.out / "export")
        if logger:
            logger.close()
            print(f"[toklip-train] step {self.step}: exported to {self.out / 'export'}; "
                  f"{skipped} samples skipped because they failed to decode")
        self._barrier()
        return metrics

    def export(self, directory: Path) -> None:
        """Gather the full student (sharded or not) and write it in our and the released layout (rank 0)."""
        state = get_model_state_dict(self.wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            student = create_model(self.model.config)
            load_state_dict_strict(student, {k.removeprefix("model."): v for k, v in state.items()},
                                   "the trained student")
            export_model(student, directory)
        self._barrier()

    def _total_skipped(self) -> int:
        """Samples skipped by all ranks so far (a collective: every rank calls it)."""
        if self.env.world_size == 1:
            return self.skipped
        tensor = torch.tensor([self.skipped], device=self.env.device)
        dist.all_reduce(tensor)
        return int(tensor)


class _MetricLogger:
    """Rank 0's metrics: ``metrics.jsonl`` (one line per logged step), TensorBoard, optional W&B."""

    def __init__(self, out: Path, tensorboard: bool, wandb: bool, config: TrainConfig):
        self.file = open(out / "metrics.jsonl", "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        self.wandb = None
        if wandb:
            import wandb as wandb_module

            self.wandb = wandb_module.init(project="toklip", dir=str(out), config=config.to_dict())

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        for name, value in metrics.items():
            if self.tb:
                self.tb.add_scalar(f"train/{name}", value, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
