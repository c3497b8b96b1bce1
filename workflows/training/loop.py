"""The fine-tuning loop: AdamW, warm-up and cosine schedule, class weights, DDP.

:func:`train` runs in one process (CPU or one GPU) or in each process of a
``torchrun`` group. Every process computes the same schedule. Only the main
process writes files: ``last.pt`` (the full training state, for resuming),
the final and best weights with their model cards, and ``history.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from pipeline.model import precision_for_device, token_grid
from pipeline.tiling import choose_patch_size
from workflows.training.chip_dataset import ChipDataset, ChipSet
from workflows.training.config import FinetuneConfig
from workflows.training.distributed import (
    DistributedContext,
    EpochSampler,
    all_reduce_sum,
    barrier,
    init_distributed,
    shard_indices,
    shutdown_distributed,
)
from workflows.training.metrics import SegmentationReport, confusion_matrix, segmentation_report
from workflows.training.model_setup import build_initial_model, reflectance_statistics, save_weights, write_model_card

logger = logging.getLogger(__name__)

STATE_NAME = "last.pt"
HISTORY_NAME = "history.jsonl"
DENSE_HEAD_PREFIX = "dense_head."

ProgressCallback = Callable[[str, dict[str, Any]], None]
"""Receives ``("start", {...})``, ``("step", {...})``, ``("validation", {...})`` and ``("end", {...})``."""


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """Paths and scores of a finished run.

    ``card_path`` is the card of the final weights; ``best_card_path`` the
    card of the weights with the best validation score (``None`` without a
    validation split).
    """

    card_path: Path
    best_card_path: Path | None
    steps: int
    patch_size: int
    best_score: float | None
    final_report: SegmentationReport | None
    history: list[dict[str, Any]]


def class_weights(counts: np.ndarray, rule: str | list[float]) -> torch.Tensor | None:
    """Loss weights per class from training pixel counts ``(K,)``.

    ``"inverse-sqrt"`` is ``1 / sqrt(share)`` and ``"enet"`` is
    ``1 / ln(1.02 + share)`` (the ENet weighting). Both are normalised to a
    pixel-weighted mean of 1 and capped at 50, so an almost absent class
    cannot dominate. ``"none"`` means no weighting, and a list gives the
    weights directly.
    """
    if isinstance(rule, list):
        if len(rule) != len(counts):
            raise ValueError(f"class_weights lists {len(rule)} weights for {len(counts)} classes")
        return torch.tensor(rule, dtype=torch.float32)
    if rule == "none":
        return None
    share = counts / max(1, counts.sum())
    safe = np.maximum(share, 1e-6)
    raw = 1.0 / np.sqrt(safe) if rule == "inverse-sqrt" else 1.0 / np.log(1.02 + safe)
    raw = raw / max(1e-12, float((raw * share).sum()))
    return torch.tensor(np.minimum(raw, 50.0), dtype=torch.float32)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _parameter_groups(model: torch.nn.Module, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Head and (unless frozen) encoder parameters, without weight decay on norms, biases and tokens."""
    spec = config.train
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        is_head = name.startswith(DENSE_HEAD_PREFIX)
        if not is_head and spec.freeze_backbone:
            parameter.requires_grad_(False)
            continue
        parameter.requires_grad_(True)
        no_decay = parameter.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "weight_tokens", "bias_token"))
        groups.setdefault(("head" if is_head else "encoder", no_decay), []).append(parameter)

    backbone_lr = spec.backbone_lr or spec.lr / 10
    return [
        {
            "params": parameters,
            "lr": spec.lr if part == "head" else backbone_lr,
            "weight_decay": 0.0 if no_decay else spec.weight_decay,
            "name": f"{part}{'-no-decay' if no_decay else ''}",
        }
        for (part, no_decay), parameters in sorted(groups.items())
    ]


def evaluate_model(
    model: torch.nn.Module,
    dataset: ChipDataset,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    patch_size: int,
    batch_size: int,
    precision: str,
    context: DistributedContext,
) -> SegmentationReport:
    """Predict every chip of ``dataset`` and return its metrics, summed over all processes."""
    spec = dataset.spec
    confusion = np.zeros((spec.num_classes, spec.num_classes), dtype=np.int64)
    indices = shard_indices(len(dataset), context)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            items = [dataset[i] for i in indices[start : start + batch_size]]
            reflectance = torch.stack([item[0] for item in items]).to(context.device)
            mask = torch.stack([item[1] for item in items])
            logits = model(prepare(reflectance), wavelengths_um=list(spec.wavelengths_um),
                           patch_size=patch_size, precision=precision)
            predicted = logits.argmax(dim=1).cpu()
            confusion += confusion_matrix(mask, predicted, spec.num_classes, spec.ignore_index)
    model.train(was_training)
    confusion = all_reduce_sum(confusion, context)
    return segmentation_report(confusion, spec.class_names, spec.positive_class)


def headline_score(report: SegmentationReport) -> float:
    """Score that picks the best checkpoint: F1 of the cloud class, or mIoU for land cover."""
    if report.positive_class is not None:
        return report.scores_of(report.positive_class).f1 or 0.0
    return report.mean_iou or 0.0


def train(config: FinetuneConfig, chips: ChipSet, progress: ProgressCallback | None = None) -> TrainingResult:
    """Fine-tune a FlexiMo model on ``chips`` with the settings of ``config``.

    When ``config.resume`` is set and ``<output>/last.pt`` exists, the run
    continues at the saved step with the saved optimiser, schedule and random
    state.
    """
    context = init_distributed(config.train.device)
    try:
        return _train(config, chips, context, progress or (lambda event, info: None))
    finally:
        shutdown_distributed(context)


def _train(config: FinetuneConfig, chips: ChipSet, context: DistributedContext, progress: ProgressCallback) -> TrainingResult:
    spec = config.train
    chip_spec = chips.spec
    if config.task is not None and config.task != chip_spec.task:
        raise ValueError(f"config task {config.task!r} differs from the chips' task {chip_spec.task!r}")
    torch.manual_seed(spec.seed + context.rank)
    if spec.torch_threads is not None:
        torch.set_num_threads(spec.torch_threads)
    output = config.output
    output.mkdir(parents=True, exist_ok=True)

    initial = build_initial_model(config.init, chip_spec)
    patch_size = choose_patch_size(initial.reference_gsd_m, initial.reference_patch_size, chip_spec.gsd_m,
                                   override=spec.patch_size)
    train_set = ChipDataset(chips, "train", augment=spec.augment)
    val_set = ChipDataset(chips, config.chips.val_split)
    if len(train_set) == 0:
        raise ValueError(f"the chip set at {chips.root} has no training chips")
    chip_px = train_set.read(0)[0].shape[-1]
    grid = token_grid((chip_px, chip_px), patch_size)[0]

    if initial.input_scaling is None:
        initial.input_scaling = reflectance_statistics(train_set)
        logger.info("input scaling from the training chips: %s", initial.input_scaling)
    model = initial.model.to(context.device)
    model.train()
    groups = _parameter_groups(model, config)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    sampler = EpochSampler(len(train_set), seed=spec.seed, rank=context.rank, world_size=context.world_size)
    steps_per_epoch = math.ceil(len(sampler) / spec.batch_size)
    total_steps = min(spec.max_steps or steps_per_epoch * spec.epochs, steps_per_epoch * spec.epochs)
    warmup_steps = int(round(spec.warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup_steps, spec.min_lr_ratio)
    )
    weights = class_weights(train_set.class_pixel_counts(), spec.class_weights)
    weights = weights.to(context.device) if weights is not None else None
    precision = precision_for_device(spec.precision, context.device)

    step, best_score, history = 0, None, []
    state_path = output / STATE_NAME
    if config.resume and state_path.is_file():
        step, best_score, history = _restore(state_path, model, optimizer, scheduler, context)
        logger.info("resumed %s at step %d of %d", state_path, step, total_steps)

    trained = DistributedDataParallel(model, device_ids=[context.device.index] if context.device.type == "cuda" else None) \
        if context.enabled else model
    scaling = initial.input_scaling
    wavelengths = list(chip_spec.wavelengths_um)

    def prepare(reflectance: torch.Tensor) -> torch.Tensor:
        return scaling.apply(reflectance.float(), wavelengths)

    logger.info(
        "training %s: %d train / %d val chips of %d px at %.3g m, patch %d px (%d x %d tokens), %d steps, "
        "precision %s, %d process(es), class weights %s",
        config.name, len(train_set), len(val_set), chip_px, chip_spec.gsd_m, patch_size, grid, grid,
        total_steps, precision, context.world_size, None if weights is None else weights.cpu().numpy().round(3).tolist(),
    )
    progress("start", {"total_steps": total_steps, "step": step, "patch_size": patch_size, "main": context.is_main})

    started = time.perf_counter()
    report = None
    while step < total_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch, skip=done_in_epoch * spec.batch_size)
        loader = DataLoader(train_set, batch_size=spec.batch_size, sampler=sampler, num_workers=spec.num_workers,
                            drop_last=False, pin_memory=context.device.type == "cuda")
        for reflectance, mask in loader:
            reflectance = reflectance.to(context.device, non_blocking=True)
            mask = mask.to(context.device, non_blocking=True)
            if spec.gain_jitter > 0:
                gains = torch.exp(torch.empty(reflectance.shape[0], 1, 1, 1, device=context.device)
                                  .uniform_(-spec.gain_jitter, spec.gain_jitter))
                reflectance = reflectance * gains
            logits = trained(prepare(reflectance), wavelengths_um=wavelengths, patch_size=patch_size, precision=precision)
            loss = F.cross_entropy(logits, mask, weight=weights, ignore_index=chip_spec.ignore_index)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if spec.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], spec.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {step}; lower train.lr or use precision: float32"
                )
            history.append({"step": step, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"]})
            progress("step", {"step": step, "loss": loss_value, "lr": history[-1]["lr"]})
            if step >= total_steps:
                break

        epoch_done = step % steps_per_epoch == 0 or step >= total_steps
        if len(val_set) and epoch_done and ((step // steps_per_epoch) % spec.val_every_epochs == 0 or step >= total_steps):
            report = evaluate_model(model, val_set, prepare=prepare, patch_size=patch_size,
                                    batch_size=spec.batch_size, precision=precision, context=context)
            score = headline_score(report)
            history.append({"step": step, "val_score": score, "val_mean_iou": report.mean_iou,
                            "val_overall_accuracy": report.overall_accuracy})
            progress("validation", {"step": step, "score": score, "report": report})
            if best_score is None or score > best_score:
                best_score = score
                if context.is_main:
                    save_weights(model, output / f"{config.name}_best.pth", _save_dtype(spec.weights_dtype))
        if context.is_main:
            _save_state(state_path, model, optimizer, scheduler, step, best_score, history)
        barrier(context)

    elapsed = time.perf_counter() - started
    result = _finish(config, chips, initial, model, patch_size, grid, best_score, report, history, step, elapsed, context)
    progress("end", {"step": step, "seconds": elapsed, "result": result})
    return result


def _save_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def _save_state(path: Path, model, optimizer, scheduler, step: int, best_score: float | None, history: list) -> None:  # type: ignore[no-untyped-def]
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best_score": best_score,
        "history": json.dumps(history),
        "torch_rng": torch.get_rng_state(),
    }
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def _restore(path: Path, model, optimizer, scheduler, context: DistributedContext) -> tuple[int, float | None, list]:  # type: ignore[no-untyped-def]
    state = torch.load(path, map_location=context.device, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"].cpu())
    return int(state["step"]), state["best_score"], json.loads(state["history"])


def _finish(config, chips, initial, model, patch_size, grid, best_score, report, history, step, elapsed, context):  # type: ignore[no-untyped-def]
    """Write the final and best weights with their cards and the history (main process only)."""
    output = config.output
    final_weights = output / f"{config.name}.pth"
    best_weights = output / f"{config.name}_best.pth"
    card_path = final_weights.with_suffix(".yaml")
    best_card = best_weights.with_suffix(".yaml") if best_weights.is_file() else None
    if context.is_main:
        save_weights(model, final_weights, _save_dtype(config.train.weights_dtype))
        training = {
            "chips": str(chips.root), "chip_counts": chips.counts(), "steps": step, "patch_size": patch_size,
            "init": config.init.source, "freeze_backbone": config.train.freeze_backbone, "lr": config.train.lr,
            "seconds": round(elapsed, 1),
            "final_val_score": None if report is None else round(headline_score(report), 4),
            "best_val_score": None if best_score is None else round(best_score, 4),
        }
        card_kwargs = dict(chips=chips.spec, config=model.config, input_scaling=initial.input_scaling,
                           patch_size=patch_size, token_grid=grid)
        write_model_card(final_weights, name=config.name, description=config.description or
                         f"FlexiMo {chips.spec.task} model fine-tuned on {chips.spec.name}", training=training, **card_kwargs)
        if best_card is not None:
            write_model_card(best_weights, name=f"{config.name}_best", description=(config.description or
                             f"FlexiMo {chips.spec.task} model fine-tuned on {chips.spec.name}") +
                             " (best validation score)", training=training, **card_kwargs)
        with (output / HISTORY_NAME).open("w") as handle:
            for entry in history:
                handle.write(json.dumps(entry) + "\n")
        logger.info("wrote %s (best validation score %s) in %.1f s", card_path, best_score, elapsed)
    barrier(context)
    return TrainingResult(card_path=card_path, best_card_path=best_card, steps=step, patch_size=patch_size,
                          best_score=best_score, final_report=report, history=history)
