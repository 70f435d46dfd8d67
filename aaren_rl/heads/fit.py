"""Fit any head on any backbone with the one training loop (:mod:`aaren_rl.training`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from aaren_rl.nn.build import build_backbone
from aaren_rl.training.checkpoint import unwrap_model
from aaren_rl.training.config import LoopConfig
from aaren_rl.training.distributed import DistContext
from aaren_rl.training.loop import TrainingLoop, model_config_dict


@dataclass
class BackboneConfig:
    """Which backbone a head sits on, and its size (the same for Aaren and the Transformer)."""

    backbone: str = "aaren"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None
    dropout: float = 0.1

    def build(self) -> nn.Module:
        return build_backbone(
            self.backbone, self.d_model, self.n_layers, self.n_heads, self.d_ff, self.dropout
        )


class HeadTrainer(TrainingLoop):
    """The training loop with a head's sampler, loss and evaluation plugged in.

    Evaluation records are ``{"step": N, **head.evaluate(model, data, device)}``; TensorBoard
    gets every metric under ``eval/``.
    """

    def __init__(
        self,
        head: Any,
        model: nn.Module,
        data: Any,
        config: LoopConfig,
        out_dir: str | os.PathLike[str] | None = None,
        dist_ctx: DistContext | None = None,
        resume: bool = False,
        progress: bool = True,
        run_info: dict[str, Any] | None = None,
        backbone: BackboneConfig | None = None,
    ) -> None:
        self.head = head
        self.backbone_config = backbone
        self.data = data
        self.run_info = dict(run_info or {})
        super().__init__(
            model,
            lambda seed: head.make_sampler(data, seed),
            config,
            out_dir=out_dir,
            dist_ctx=dist_ctx,
            resume=resume,
            progress=progress,
            loss_fn=head.loss,
            description=f"fit {head.name}",
        )

    def evaluate(self) -> list[dict[str, Any]]:
        with self.evaluation_mode():
            metrics = self.head.evaluate(self.model, self.data, self.ctx.device)
        return [{"step": self.step, **{k: float(v) for k, v in metrics.items()}}]

    def checkpoint_model_config(self) -> dict[str, Any]:
        config = model_config_dict(self.model)
        if config is None:  # a third-party head without a dataclass config
            config = {"head": self.head.name, **self.run_info.get("model_options", {})}
        if self.backbone_config is not None:
            config = {**config, "backbone": dataclasses.asdict(self.backbone_config)}
        return config

    def data_identity(self) -> dict[str, Any]:
        """The data's content (and its name, for the message): a resume on another file, even
        of the same shape, is refused."""
        from aaren_rl.training.fingerprint import data_identity

        label = self.run_info.get("data") or type(self.data).__name__
        return data_identity(self.data, str(label), head=self.head.name)

    def checkpoint_fields(self) -> dict[str, Any]:
        return {"head": self.head.name, "train_config": self.cfg.to_dict(), **self.run_info}

    def metrics_payload(self, evaluations: list[Any], seconds: float) -> dict[str, Any]:
        payload = super().metrics_payload(evaluations, seconds)
        payload["head"] = self.head.name
        return payload


def fit_head(
    head: Any,
    data: Any,
    backbone: BackboneConfig | None = None,
    config: LoopConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
    device: str | torch.device = "cpu",
    **options: Any,
) -> tuple[nn.Module, Any]:
    """Build ``head`` (a name or a head object) on ``backbone`` and train it on ``data``.

    ``options`` go to ``head.build_model``. Returns ``(model, result)`` with the trained,
    unwrapped model and the loop's :class:`~aaren_rl.training.loop.LoopResult`.
    """
    from aaren_rl.heads.registry import get_head
    from aaren_rl.training.rng import seed_everything

    head = get_head(head) if isinstance(head, str) else head
    backbone = backbone or BackboneConfig()
    config = config or LoopConfig()
    seed_everything(config.seed)
    model = head.build_model(data, backbone.build(), **options).to(device)
    trainer = HeadTrainer(
        head,
        model,
        data,
        config,
        out_dir=out_dir,
        dist_ctx=DistContext(device=torch.device(device)),
        resume=resume,
        progress=progress,
        run_info={"model_options": dict(options)},
        backbone=backbone,
    )
    try:
        result = trainer.train()
    finally:
        trainer.close()
    return unwrap_model(trainer.model), result
