"""The one quantization-aware training loop every QAT method shares (the method-specific parts are in qat.py).

It trains a copy of the BatchNorm-folded FX graph directly: the graph's parameters are nn.Parameters named by
FQN, and an fx.Interpreter swaps each quantized layer's input and weight for their training-time quantized
versions. The graph was exported for a fixed batch size, so a step accumulates gradients over micro-batches of
that size up to the requested batch. Adam, cross-entropy, no weight decay.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx

from .console import progress
from .errors import UserError
from .frontend import LayerInfo
from .qat import FLOAT, NOISE, Trainer, fake_quant, make_trainer
from .scheme import ActQuant, WeightQuant


@dataclass(frozen=True)
class TrainConfig:
    """`--epochs`, `--lr`; `batch_size` is the effective batch; `max_steps` caps a run (tests)."""

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 64
    seed: int = 0
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")


class QuantForward(fx.Interpreter):
    """The folded graph with quantized layers: training-time (trainer's weights and activation modes) or, given
    `exported`, the evaluation form of the exported representation."""

    def __init__(
        self, gm: fx.GraphModule, layers: list[LayerInfo], acts: dict[str, ActQuant],
        trainer: Trainer | None = None, exported: dict[str, WeightQuant] | None = None,
    ):
        super().__init__(gm)
        self.by_node = {info.node: info.name for info in layers if info.name in acts}
        self.acts, self.trainer = acts, trainer
        self.exported = {k: torch.from_numpy(v.dequantize()).float() for k, v in (exported or {}).items()}

    def run_node(self, n: fx.Node):
        name = self.by_node.get(n.name)
        if name is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        act = self.acts[name]
        mode = "quant" if self.exported else self.trainer.act_mode(name)
        x = args[0]
        if mode != FLOAT:
            x = fake_quant(x, act.scale, act.inv_scale, act.zero_point, act.qmax, noise=mode == NOISE)
        weight = self.exported[name] if self.exported else self.trainer.weight(name)
        return n.target(x, weight, *args[2:], **kwargs)


def train_quantized(
    gm: fx.GraphModule, layers: list[LayerInfo], bits: dict[str, int], acts: dict[str, ActQuant], method: str,
    data: tuple[np.ndarray, np.ndarray], batch: int, config: TrainConfig,
) -> tuple[fx.GraphModule, dict[str, WeightQuant]]:
    """Fine-tune a copy of `gm` with `method`'s quantizers; returns the trained graph (its float biases and
    float layers changed too) and every quantized layer's exported weights."""
    x, y = data
    if len(x) < batch:
        raise UserError(f"training needs at least {batch} samples (the model's batch size), got {len(x)}")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    gm = copy.deepcopy(gm)
    for p in gm.parameters():
        p.requires_grad_(True)
    names = [info for info in layers if info.name in acts]
    weights = {info.name: gm.get_parameter(info.weight) for info in names}
    per_epoch = len(x) // max(config.batch_size, batch)
    micro = max(1, config.batch_size // batch)
    total = max(1, config.epochs * per_epoch)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    trainer = make_trainer(method, weights, bits, config.epochs)
    forward = QuantForward(gm, names, acts, trainer)
    optimizer = torch.optim.Adam(list(gm.parameters()) + trainer.parameters(), lr=config.lr)
    order = np.array([], dtype=np.int64)
    with progress(total=total, desc=f"QAT {method}", unit="step") as bar:
        for step in range(total):
            trainer.start_step(step / total)
            if len(order) < micro * batch:
                order = np.concatenate([order, rng.permutation(len(x))])
            optimizer.zero_grad()
            for _ in range(micro):
                idx, order = order[:batch], order[batch:]
                loss = F.cross_entropy(forward.run(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])) / micro
                loss.backward()
            optimizer.step()
            trainer.after_step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item() * micro:.3f}")
    for p in gm.parameters():
        p.requires_grad_(False)
    return gm, {name: trainer.export(name) for name in weights}
