"""Run by test_multiprocess.py (under `accelerate launch` or plain python): one small training run.

argv: workspace dataset model batch steps out_dir. The gradient the optimizer is handed at step 1 (after
the all-reduce across ranks, before the update) is saved by rank 0 to `<out_dir>/step1.safetensors`,
keyed `<param group>.<index>` (the same order in every set-up), through torch's global optimizer hook:
the training itself runs unchanged. Each rank then writes `<out_dir>/rank-<rank>.json`: the run id it
got and whether the stage runner's main process (RANK) and accelerate's agree about it."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from dpop.config import TrainConfig
from dpop.train import train
from pipeline.stage import is_main_process

workspace, dataset_id, model_path, batch, steps, gradients_dir = sys.argv[1:7]
steps_seen = []


def save_first_gradient(optimizer, args, kwargs):
    steps_seen.append(1)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if len(steps_seen) == 1 and rank == 0:
        gradients = {
            f"{group}.{index}": parameter.grad.detach().clone()
            for group, values in enumerate(optimizer.param_groups)
            for index, parameter in enumerate(values["params"])
            if parameter.grad is not None
        }
        Path(gradients_dir).mkdir(parents=True, exist_ok=True)
        save_file(gradients, str(Path(gradients_dir) / "step1.safetensors"))


register_optimizer_step_pre_hook(save_first_gradient)
config = TrainConfig(
    max_steps=int(steps),
    per_device_train_batch_size=int(batch),
    per_device_eval_batch_size=4,
    logging_steps=1,
    learning_rate=1e-3,
    save_steps=1000,
    disable_tqdm=True,
)
result = train(workspace, dataset_id, model_path, config)

from accelerate import PartialState  # noqa: E402 (after training: the Trainer set the state up)

state = PartialState()
report = {"run_id": result.run_id, "runner_main": is_main_process(), "accelerate_main": state.is_main_process}
(Path(gradients_dir) / f"rank-{state.process_index}.json").write_text(json.dumps(report))
