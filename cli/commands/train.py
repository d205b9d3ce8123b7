"""`dpop train`: DPOP training on a dataset version (`dpop.train.TrainStage`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.commands._common import WorkspaceOption, clean_errors, console


# Long only for its typer option declarations (one per flag, with its help); the body is short.
def train(
    workspace: WorkspaceOption = None,
    dataset: Annotated[
        str, typer.Option("--dataset", "-d", help="Dataset version id (from `dpop build`/`dpop refs`).")
    ] = ...,
    model: Annotated[
        Path, typer.Option("--model", "-m", help="Base model folder (save_pretrained, safetensors).")
    ] = ...,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TrainConfig YAML: dpop's keys and any TrainingArguments field (examples/train.yaml); flags override it.",
        ),
    ] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="dpop | dpo | ipo | robust | hinge.")] = None,
    beta: Annotated[
        float | None, typer.Option("--beta", help="β: strength of the KL anchor to the reference.")
    ] = None,
    penalty_lambda: Annotated[
        float | None,
        typer.Option("--penalty-lambda", help="DPOP's λ (penalty inside the sigmoid); 0 gives DPO."),
    ] = None,
    lora_r: Annotated[int | None, typer.Option("--lora-r", help="LoRA rank; 0 = full fine-tuning.")] = None,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="Peak learning rate.")] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", help="Epochs (when --max-steps is not set).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Pairs per device per step.")] = None,
) -> None:
    """Train a model on a dataset version with DPO-Positive (or DPO/IPO/rDPO/hinge); write <ws>/runs/<run_id>/.

    The run id is a hash of the dataset, the model, the reference and the training config: the same
    command again reuses the finished run, and a run that was killed continues from its last checkpoint."""
    with clean_errors():
        from cli.commands._workspace import writable_workspace
        from dpop.config import TrainConfig
        from dpop.train import train as run_training

        base = TrainConfig.from_yaml(config) if config else TrainConfig()
        train_config = base.with_overrides(
            loss=loss,
            beta=beta,
            penalty_lambda=penalty_lambda,
            lora_r=lora_r,
            learning_rate=learning_rate,
            max_steps=max_steps,
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
        )
        result = run_training(writable_workspace(workspace), dataset, model, train_config)
        print_final_metrics(result.final_metrics)
        if result.reused:
            console.print(f"run {result.run_id} had finished with these inputs: reused, nothing trained")
        elif result.resumed:
            console.print(f"run {result.run_id} was interrupted before: resumed from its last checkpoint")
        console.print(f"model saved in {result.model_dir}")
        console.print(result.run_id, highlight=False, markup=False)


def print_final_metrics(metrics: dict) -> None:
    from rich.table import Table

    table = Table(title="Final metrics")
    table.add_column("metric")
    table.add_column("train", justify="right")
    table.add_column("eval", justify="right")
    names = [
        "loss",
        "rewards/accuracies",
        "rewards/margins",
        "rewards/chosen",
        "rewards/rejected",
        "logps/chosen",
        "ref_logps/chosen",
        "logps/rejected",
        "logps/chosen_post_edit",
        "dpop/penalty",
        "dpop/penalty_active",
    ]
    for name in names:
        train_value, eval_value = metrics.get(name), metrics.get(f"eval_{name}")
        if train_value is None and eval_value is None:
            continue
        table.add_row(
            name, *(f"{v:.4g}" if isinstance(v, int | float) else "" for v in (train_value, eval_value))
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
