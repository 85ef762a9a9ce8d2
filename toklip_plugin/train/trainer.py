"""The TokLIP training loop (paper Section 3.1): only the code mapping and the token encoder learn.

A step is: frozen targets (VQ codes, text embedding, teacher targets; computed or read from a
cache) -> the student's semantic tokens and pooled embedding -> loss -> backward over
``accum_steps`` micro-batches -> clip -> AdamW -> cosine schedule. The student is wrapped in DDP,
or FSDP for the So400m configs; the frozen parts stay in eval mode outside the optimizer.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)

from ..checkpoints import load_state_dict_strict
from ..evaluation.heldout import cache_evaluator
from ..factory import create_model, get_tokenizer
from ..hub import upload_folder
from ..models.teacher import build_teacher
from ..models.toklip import TokLIP
from ..precision import autocast
from ..progress import ProgressBar
from ..transforms import image_transform, train_transform
from .config import TrainConfig
from .data import StreamPosition, build_loader, resume_position
from .distributed import (DistEnv, all_reduce_sum, average_grads, barrier, clip_grad_norm, init_distributed,
                          wrap_student)
from .losses import TokLIPLoss, clamp_logit_scale
from .metric_log import MetricLogger
from .optim import build_optimizer
from .state import (ResumeError, RunLock, check_resume_config, export_model, load_checkpoint, load_latest_readable,
                    remove_stale_temporaries, restore_rng, rng_states, save_checkpoint)
from .cache_file import check_cache_for_run
from .student import StudentForward, build_student
from .targets import FrozenTargets

__all__ = ["Trainer"]

Batch = dict[str, torch.Tensor]


class Trainer:
    """Builds everything from a :class:`TrainConfig`, resumes from the newest checkpoint, trains.

    ``eval_fn(model) -> {name: value}`` runs every ``run.eval_every`` steps on rank 0; by default it
    is the zero-shot / retrieval evaluation of the held-out cache ``run.eval_data``. A resume under a
    config that differs from the checkpoint's is refused, except in the keys of
    ``allow_config_change`` (and the harmless ones of ``state.RESUMABLE_CHANGES``).
    """

    def __init__(self, config: TrainConfig, env: Optional[DistEnv] = None,
                 eval_fn: Optional[Callable[[TokLIP], dict[str, float]]] = None,
                 allow_config_change: Sequence[str] = ()):
        self.config, run = config, config.run
        self.allow_config_change = tuple(allow_config_change)
        self.env = env or init_distributed(run.device, run.collective_timeout_s)
        self.eval_fn = eval_fn or (cache_evaluator(run.eval_data) if run.eval_data else None)
        self.out = Path(run.output_dir)
        self.teacher = (build_teacher(config.teacher, config.model_config(), run.seed).to(self.env.device)
                        if config.uses_teacher else None)
        self.model = build_student(config, self.teacher).to(self.env.device)
        check_cache_for_run(config, self.model.vq, self.teacher)  # a code cache of another VQ / teacher is refused
        torch.manual_seed(run.seed + self.env.rank)
        if run.grad_checkpointing:
            self.model.encoder.set_grad_checkpointing(True)
        self.student, self._replicated = wrap_student(StudentForward(self.model), self.env, run.distributed)
        if self.eval_fn and run.eval_every and self.sharded:
            raise ValueError("run.eval_every evaluates the whole student on rank 0, but FSDP shards it; evaluate "
                             "the exported checkpoints instead (run.eval_every=0), or use run.distributed=ddp")
        self.targets = FrozenTargets(self.model.vq, self.model.text, self.teacher, config.loss.distill_weight > 0,
                                     config.loss.token_distill_weight > 0, run.precision, run.text_cache_size)
        self.loss = TokLIPLoss(config.loss, self.env.rank, self.env.world_size)
        self.total_steps = config.optim.total_steps(config.data.num_samples)  # optim.steps, or from epochs
        self.optimizer, self.scheduler = build_optimizer(self.student, config.optim, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=run.precision == "fp16")
        self.step, self.skipped = 0, 0  # optimizer steps, samples this rank skipped
        # the data position: the cursor of the last batch consumed from each of this rank's data workers
        self.position = StreamPosition.start(self.env.rank, self.env.world_size, self.data_workers)
        self.nonfinite_in_a_row = 0
        self.last_eval: Optional[dict[str, Any]] = None  # rank 0's latest evaluation, for the model card

    @property
    def sharded(self) -> bool:
        """Whether FSDP shards the student's parameters over the ranks."""
        return self.env.world_size > 1 and self.config.run.distributed == "fsdp"

    @property
    def data_workers(self) -> int:
        """Data slots per rank: the DataLoader's worker processes, or the rank itself."""
        return max(self.config.data.workers, 1)

    @property
    def consumed(self) -> int:
        """Batches this rank has read (micro-batches, skipped non-finite steps included)."""
        return self.position.batches

    @property
    def local_batch_size(self) -> int:
        optim, world = self.config.optim, self.env.world_size
        per_step = optim.batch_size // optim.accum_steps
        if per_step % world:
            raise ValueError(f"optim.batch_size {optim.batch_size} / accum_steps {optim.accum_steps} = {per_step} "
                             f"is not divisible by the {world} ranks; pick a batch size that is")
        return per_step // world

    def batches(self) -> Iterator[Batch]:
        """This rank's batch stream from the current position on (a cache holds tensors: no decoding, no tokenizer)."""
        data = self.config.data
        images = data.kind != "cache"
        make_transform = train_transform if data.augment else image_transform
        transform = make_transform(self.model.image_size) if images else None
        tokenizer = get_tokenizer(self.model.config) if images else None
        return iter(build_loader(self.config.data, transform, tokenizer, self.local_batch_size, self.position,
                                 self.config.run.seed))

    # resume state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume needs (a collective: every rank takes part in gathering it)."""
        model_sd, optim_sd = get_state_dict(self.student, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        return {"step": self.step, "model": model_sd, "optimizer": optim_sd,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "data": self._data_state(), "rng": rng_states(self.env), "world_size": self.env.world_size,
                "config": self.config.to_dict()}

    def _data_state(self) -> dict[str, Any]:
        """The data position of every rank (a collective): the global count of skipped samples and each slot's
        cursor, rank-major; ``cursors`` is None while a slot's is unknown (after resuming an old checkpoint)."""
        workers, rank = self.data_workers, self.env.rank
        table = torch.zeros(self.env.world_size * workers + 1, 2, dtype=torch.int64)
        table[rank * workers:(rank + 1) * workers] = torch.tensor(
            [cursor if cursor is not None else (-1, -1) for cursor in self.position.cursors])
        table[-1, 0] = self.skipped
        table = all_reduce_sum(table.to(self.env.device), self.env).cpu()
        cursors = table[:-1].tolist()
        return {"batches": self.consumed, "skipped": int(table[-1, 0]), "workers": workers,
                "next_worker": self.position.next_worker, "cursors": cursors if table[:-1].min() >= 0 else None}

    def save(self) -> None:
        """Write a checkpoint of the current state (refused for a model with a non-finite weight)."""
        finite = all(bool(torch.isfinite(p).all()) for p in self.student.parameters() if p.requires_grad)
        if all_reduce_sum(torch.tensor([float(not finite)], device=self.env.device), self.env).item():  # any rank
            raise FloatingPointError(f"step {self.step}: the student has a non-finite weight; not saving it over "
                                     f"the finite checkpoints in {self.out / 'checkpoints'}")
        state = self.state()
        if self.env.is_main:
            save_checkpoint(self.out / "checkpoints", self.step, state, self.config.run.keep_last)
        barrier(self.env)

    def resume(self, path: Optional[Path] = None) -> bool:
        """Load ``path``, or the newest checkpoint in ``output_dir`` that reads back (newer ones that do not are
        skipped with a warning); False when there is none."""
        if path is not None:
            state = load_checkpoint(path)
        else:
            found = load_latest_readable(self.out / "checkpoints")
            if found is None:
                return False
            path, state = found
        try:  # before loading anything: a position that cannot be restored refuses the checkpoint
            position = resume_position(state["data"], state["world_size"], self.env.rank, self.env.world_size,
                                       self.data_workers)
        except ValueError as err:
            raise ResumeError(f"checkpoint {path} cannot be resumed: {err}") from None
        check_resume_config(path, state["config"], self.config.to_dict(), self.allow_config_change)
        self._check_state_keys(path, state["model"])
        set_state_dict(self.student, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(full_state_dict=True, strict=False))
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        # the saved count is every rank's: rank 0 carries it on, so that skipped_total (a sum over ranks) goes on
        self.step, self.skipped = state["step"], state["data"]["skipped"] if self.env.is_main else 0
        self.position = position
        restore_rng(state["rng"], self.env, self.config.run.seed)
        return True

    def _check_state_keys(self, path: Path, saved: dict[str, torch.Tensor]) -> None:
        """The checkpoint must hold exactly the student's trainable weights and buffers (a strict load)."""
        expected = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
        expected |= {f"model.{n}" for n, _ in self.model.named_buffers()}
        missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
        if missing or unexpected:
            raise ResumeError(f"checkpoint {path} does not fit this student ({self.model.config.name}): missing "
                             f"{missing[:10]}, unexpected {unexpected[:10]}")

    # one optimisation step ---------------------------------------------------------------------
    def train_step(self, batches: Iterator[Batch]) -> dict[str, float]:
        """One optimizer step over ``accum_steps`` micro-batches; the metrics reach the host once, at the end.

        A step whose loss or gradient norm is not finite changes nothing: no optimizer or scheduler
        advance (the batches stay consumed). ``metrics["nonfinite"]`` is 1.0 for such a step.
        """
        accum = self.config.optim.accum_steps
        totals: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            terms = self._micro_step(next(batches), sync=micro == accum - 1)
            for name, value in terms.items():  # float64, as Python floats would sum them
                totals[name] = totals.get(name, 0.0) + value.detach().double() / accum
        if self._replicated:
            average_grads(self._replicated, self.env.world_size)
        self.scaler.unscale_(self.optimizer)
        totals["grad_norm"] = clip_grad_norm(self.student, self._replicated, self.config.optim.grad_clip or math.inf,
                                             self.sharded)
        metrics = self._to_host(totals)
        lr = self.scheduler.get_last_lr()[0]
        if self._is_finite(metrics):
            self.scaler.step(self.optimizer)
            self.scaler.update()
            clamp_logit_scale(self.model)  # to [0, ln 100] after every update, as open_clip_train does
            self.scheduler.step()
            self.step += 1
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
        self.optimizer.zero_grad(set_to_none=True)
        return {**metrics, "lr": lr, "nonfinite": float(self.nonfinite_in_a_row > 0)}

    def _is_finite(self, metrics: dict[str, float]) -> bool:
        """Whether the step may update the model. Under fp16 an overflowing gradient is the GradScaler's to
        skip (it lowers its scale), so only the loss decides there."""
        if self.scaler.is_enabled():
            return math.isfinite(metrics["total"])
        return math.isfinite(metrics["total"]) and math.isfinite(metrics["grad_norm"])

    def _micro_step(self, host: Batch, sync: bool) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (gradients synchronised across ranks when ``sync``)."""
        self.skipped += int(host.pop("skipped"))  # still on the host: no device sync
        self.position = self.position.after(host.pop("cursor"))
        batch = {k: v.to(self.env.device, non_blocking=True) for k, v in host.items()}
        targets = self.targets(batch, host.get("text"))
        no_sync = not sync and hasattr(self.student, "no_sync")
        with (self.student.no_sync() if no_sync else contextlib.nullcontext()), \
                autocast(self.env.device, self.config.run.precision):
            pooled, tokens = self.student(targets["codes"])
            terms = self.loss(pooled, targets["text_emb"], self.model.logit_scale, self.model.logit_bias,
                              tokens, targets["teacher_pooled"], targets["teacher_tokens"])
        self.scaler.scale(terms["total"] / self.config.optim.accum_steps).backward()
        return terms

    def _to_host(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means over ranks of the step's metrics, plus ``skipped_total`` (the samples every rank skipped so
        far), reduced in one collective and copied to the host in one transfer: the step's only sync."""
        keys = sorted(values)
        skipped = torch.tensor(float(self.skipped), dtype=torch.float64, device=self.env.device)
        stacked = all_reduce_sum(torch.stack([values[k].double() for k in keys] + [skipped]), self.env)
        *sums, skipped_total = stacked.tolist()
        return {**{k: v / self.env.world_size for k, v in zip(keys, sums)}, "skipped_total": int(skipped_total)}

    # the run -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train to ``total_steps`` (resuming if a checkpoint exists), save, export; the last metrics.

        Rank 0 holds ``output_dir``'s lock for the whole run: a second run on the same directory stops at once.
        """
        with RunLock(self.out) if self.env.is_main else contextlib.nullcontext():
            return self._fit()

    def _fit(self) -> dict[str, float]:
        if self.env.is_main:
            for stale in remove_stale_temporaries(self.out / "checkpoints"):
                ProgressBar.write(f"[toklip-train] removed {stale}, left by an interrupted save")
        barrier(self.env)
        resumed = self.resume()
        if self.env.is_main:  # only once the resume has accepted the config
            self.config.save(self.out / "config.yaml")
        self.student.train()
        logger = self._logger()
        batches, metrics = self.batches(), {}
        bar = ProgressBar(total=self.total_steps, initial=self.step, disable=not self.env.is_main,
                          desc=f"{self.config.run.run_name} ({'resumed' if resumed else 'train'})", dynamic_ncols=True)
        while self.step < self.total_steps:
            metrics = self._step_and_report(batches, logger)
            bar.n = self.step
            bar.set_postfix(loss=f"{metrics['total']:.4f}", lr=f"{metrics['lr']:.2e}",
                            img_s=f"{metrics['images_per_s']:.0f}", skipped=metrics["skipped_total"])
        bar.close()
        skipped = int(all_reduce_sum(torch.tensor([self.skipped], device=self.env.device), self.env))
        self.export(self.out / "export")
        if logger:
            logger.close()
            print(f"[toklip-train] {self.config.run.run_name}, step {self.step}: exported to {self.out / 'export'}; "
                  f"{skipped} samples skipped because they failed to decode")
        barrier(self.env)
        if self.env.is_main and self.config.run.push_to_hub:
            self.push_export(self.out / "export" / "toklip")
        return metrics

    def _step_and_report(self, batches: Iterator[Batch], logger: Optional[MetricLogger]) -> dict[str, float]:
        """One step, then the evaluation hook, logging and saving that fall on it; a non-finite step is logged
        and, ``run.max_nonfinite_steps`` in a row, ends the run without saving."""
        run, last = self.config.run, self.total_steps
        start = time.perf_counter()
        metrics = self.train_step(batches)
        metrics["images_per_s"] = self.config.optim.batch_size / (time.perf_counter() - start)
        if metrics["nonfinite"]:
            self._on_nonfinite(metrics, logger)
            return metrics
        if self.eval_fn and run.eval_every and self.step % run.eval_every == 0 and self.env.is_main:
            results = self.eval_fn(self.model)
            metrics.update(results)
            self.last_eval = {"eval_step": self.step, **results}
        if logger and (self.step % run.log_every == 0 or self.step == last):
            logger.log(self.step, metrics)
        if self.step % run.save_every == 0 or self.step == last:
            self.save()
        return metrics

    def _on_nonfinite(self, metrics: dict[str, float], logger: Optional[MetricLogger]) -> None:
        limit = self.config.run.max_nonfinite_steps
        if logger:
            logger.log(self.step, metrics)
        message = (f"step {self.step + 1}: loss {metrics['total']} / gradient norm {metrics['grad_norm']} is not "
                   f"finite; the step was skipped ({self.nonfinite_in_a_row} in a row, at most {limit})")
        if self.env.is_main:
            ProgressBar.write(f"[toklip-train] {message}")
        if self.nonfinite_in_a_row >= limit:
            raise FloatingPointError(
                f"{message}. Stopping without saving: the checkpoints in {self.out / 'checkpoints'} are the last "
                "finite ones. Look for NaN/inf in the data or cache (teacher targets), or lower optim.lr; raise "
                "run.max_nonfinite_steps to tolerate more")

    def _logger(self) -> Optional[MetricLogger]:
        run = self.config.run
        if not self.env.is_main:
            return None
        return MetricLogger(self.out, run.report_to, self.config.to_dict(), start_step=self.step, name=run.run_name)

    def export(self, directory: Path) -> None:
        """Gather the full student (sharded or not) and write it in our and the released layout (rank 0)."""
        state = get_model_state_dict(self.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.env.is_main:
            student = create_model(self.model.config)
            load_state_dict_strict(student, {k.removeprefix("model."): v for k, v in state.items()},
                                   "the trained student")
            export_model(student, directory, model_card=self._model_card())
        barrier(self.env)

    def _model_card(self) -> dict[str, Any]:
        """The export's model card: the Hub repo it goes to, the training data, the latest evaluation."""
        return {"repo_id": self.config.run.push_to_hub, "training_data": [self.config.data.train],
                "eval_results": self.last_eval}

    def push_export(self, directory: Path) -> Optional[str]:
        """Upload the exported model (with its card) to ``run.push_to_hub``; the commit URL, or None when the upload
        failed. A failed upload does not fail the run: the export stays on disk and the message says how to retry."""
        repo_id, name = self.config.run.push_to_hub, self.config.run.run_name
        message = f"toklip-train {name}: step {self.step}"
        try:
            url = upload_folder(directory, repo_id, commit_message=message)
        except Exception as err:  # no network, no token, no permission: the run itself succeeded
            print(f"[toklip-train] uploading {directory} to the Hub repo {repo_id} failed ({type(err).__name__}: "
                  f"{str(err).splitlines()[0] if str(err) else ''}). The exported model is on disk; retry with: "
                  f"huggingface-cli upload {repo_id} {directory} . --commit-message '{message}'",
                  file=sys.stderr, flush=True)
            return None
        print(f"[toklip-train] uploaded {directory} to the Hub repo {repo_id}: {url}", flush=True)
        return url
