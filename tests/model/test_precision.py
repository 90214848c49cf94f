"""Mixed precision with gradient clipping and a fused AdamW (found on an H100: Lightning's mixed-precision
plugin refuses to clip for any optimizer that unscales inside ``step()``, even under bf16 where no scaler
exists). The task base clips directly then; under fp16 it falls back to the unfused AdamW (checked on the
GPU by bench/gpu_lightning.py). The fused kernel is also the default for plain CPU parameters."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from glm.tasks.pretrain import PretrainModule

MODEL = {"preset": "glm-tiny", "hidden_dropout": 0.0, "attention_dropout": 0.0}


def _batches(n: int, length: int = 32, vocab: int = 8064) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(10, vocab, (2, length), generator=g)
        pos = torch.arange(length).expand(2, length)
        out.append(
            {
                "input_ids": ids,
                "targets": torch.randint(10, vocab, (2, length), generator=g),
                "loss_mask": torch.ones(2, length),
                "position_ids": torch.stack([pos, torch.zeros_like(pos)], 1),
                "sep": torch.tensor([length // 2, length // 3]),
            }
        )
    return out


def _fit(precision: str, fused: bool | None, clip: float) -> tuple[PretrainModule, L.Trainer]:
    torch.manual_seed(0)
    module = PretrainModule(model=MODEL, optimizer={"lr": 1e-3, "fused": fused}, scheduler={"total_steps": 3})
    trainer = L.Trainer(
        accelerator="cpu",
        precision=precision,
        max_steps=3,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(_batches(3), batch_size=None))
    return module, trainer


def test_bf16_fused_adamw_with_clipping_trains_and_clips() -> None:
    module, trainer = _fit("bf16-mixed", fused=True, clip=1.0)  # Lightning alone raises here
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True and trainer.global_step == 3
    # the clipping itself: gradients of known norm are scaled to exactly the clip value
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float(i % 3 + 1))
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    assert norm > 10
    module.configure_gradient_clipping(optimizer, 2.0, "norm")
    after = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
    assert abs(after.item() - 2.0) < 1e-4
    module.configure_gradient_clipping(optimizer, 0.5, "value")
    assert max(p.grad.abs().max().item() for p in params) <= 0.5


def test_fused_adamw_is_the_cpu_default_and_matches_the_per_parameter_loop() -> None:
    fused_module, trainer = _fit("32-true", fused=None, clip=1.0)
    assert trainer.optimizers[0].defaults["fused"] is True  # default on plain CPU parameters
    loop_module, trainer = _fit("32-true", fused=False, clip=1.0)
    assert trainer.optimizers[0].defaults["fused"] is False
    moved = 0.0
    for (name, a), b, s in zip(
        fused_module.model.named_parameters(),
        loop_module.model.parameters(),
        _initial_parameters(),
        strict=True,
    ):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name  # same three AdamW updates
        moved = max(moved, (a - s).abs().max().item())
    assert moved > 1e-4  # the steps really changed the weights (lr 1e-3)


def _initial_parameters() -> list[torch.Tensor]:
    """The weights `_fit` starts from (same seed, same construction)."""
    torch.manual_seed(0)
    module = PretrainModule(model=MODEL, optimizer={"lr": 1e-3}, scheduler={"total_steps": 3})
    module.configure_model()
    return [p.detach().clone() for p in module.model.parameters()]
