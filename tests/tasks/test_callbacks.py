"""MFUMonitor: FLOP/s and MFU against hand-computed numbers with a fake clock, in a stub loop and in a real
Lightning fit of the PretrainModule; the per-device peak table."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from glm.callbacks import MFUMonitor, compute_dtype, lookup_peak_tflops
from glm.model import GLMConfig

# glm-tiny shape with V = 128: h = 64, ffn = 256, 2 layers. Training FLOPs per token at L = 16, by hand:
#   matmul weights = 2 * (4*64*64 + 256*64 + 256*64) + 128*64 = 2 * 49152 + 8192 = 106496
#   attention      = 2 layers * 2 * L * h = 2 * 2 * 16 * 64 = 4096 multiply-adds per token
#   forward        = 2 * (106496 + 4096) = 221184 FLOPs; training = 3x = 663552
FLOPS_PER_TOKEN_L16 = 663_552
BATCH = torch.zeros(4, 16, dtype=torch.long)  # 64 tokens per micro-batch
F = FLOPS_PER_TOKEN_L16 * 64  # 42_467_328 FLOPs per micro-batch


def tiny_config() -> GLMConfig:
    return GLMConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=128, max_sequence_length=32
    )


def test_flops_per_token_matches_hand_count() -> None:
    assert tiny_config().flops_per_token(16) == FLOPS_PER_TOKEN_L16


class FakeClock:
    def __init__(self, times: list[float]) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


class Recorder(SimpleNamespace):
    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged.append((self.trainer.global_step, name, value))


def run_stub(callback: MFUMonitor, steps_per_batch: list[int], shape=(4, 16)) -> list:
    """Drive the callback like Lightning's loop: global_step after each micro-batch is given."""
    trainer = SimpleNamespace(global_step=0, precision="32-true")
    module = Recorder(glm_config=tiny_config(), device=torch.device("cpu"), trainer=trainer, logged=[])
    callback.on_train_start(trainer, module)
    for i, step in enumerate(steps_per_batch):
        trainer.global_step = step
        callback.on_train_batch_end(
            trainer, module, None, {"input_ids": torch.zeros(shape, dtype=torch.long)}, i
        )
    return module.logged


def test_rate_and_mfu_by_hand_with_a_fake_clock() -> None:
    # warm-up step 1 ends at t=10 (clock starts); step 2 ends at t=12: 1 batch in 2 s;
    # steps 3, 4 end at t=15: 2 batches in 3 s
    cb = MFUMonitor(every_n_steps=2, skip_steps=1, peak_tflops=1e-4, clock=FakeClock([10.0, 12.0, 15.0]))
    logged = run_stub(cb, [1, 2, 3, 4])
    peak = 1e-4 * 1e12
    assert logged == [
        (2, "perf/flops_per_s", pytest.approx(F / 2)),
        (2, "perf/mfu", pytest.approx(F / 2 / peak)),
        (4, "perf/flops_per_s", pytest.approx(2 * F / 3)),
        (4, "perf/mfu", pytest.approx(2 * F / 3 / peak)),
    ]
    assert logged[0][2] == pytest.approx(21_233_664.0)  # 42_467_328 / 2


def test_gradient_accumulation_counts_every_micro_batch() -> None:
    # accumulate 2: global_step moves every second micro-batch; no warm-up, clock starts at train start (t=0)
    cb = MFUMonitor(every_n_steps=2, skip_steps=0, clock=FakeClock([0.0, 4.0]))
    logged = run_stub(cb, [0, 1, 1, 2])
    assert logged == [(2, "perf/flops_per_s", pytest.approx(4 * F / 4.0))]  # no peak on CPU: no perf/mfu


def test_longer_rows_cost_more_per_token() -> None:
    cb = MFUMonitor(every_n_steps=1, skip_steps=0, clock=FakeClock([0.0, 1.0]))
    logged = run_stub(cb, [1], shape=(2, 32))
    per_token = 3 * 2 * (106_496 + 2 * 2 * 32 * 64)  # attention grows with L
    assert logged == [(1, "perf/flops_per_s", pytest.approx(per_token * 64))]


def test_peak_table_and_precision() -> None:
    from glm.callbacks import DEFAULT_DEVICE_PEAKS_TFLOPS as table

    assert lookup_peak_tflops("NVIDIA H100 80GB HBM3", "bf16", table) == 989.4
    assert lookup_peak_tflops("NVIDIA H100 PCIe", "bf16", table) == 756.0  # the longer key wins
    assert lookup_peak_tflops("NVIDIA A100-SXM4-80GB", "tf32", table) == 156.0
    assert lookup_peak_tflops("Some CPU", "fp32", table) is None
    assert lookup_peak_tflops("Tesla V100-SXM2", "bf16", table) is None  # no bf16 on V100
    assert compute_dtype("bf16-mixed") == "bf16" and compute_dtype("16-mixed") == "fp16"
    assert compute_dtype("32-true") == (
        "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    )
    with pytest.raises(ValueError, match="every_n_steps"):
        MFUMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match="peak_tflops"):
        MFUMonitor(peak_tflops=0.0)


def test_real_lightning_fit_logs_hand_computed_rate() -> None:
    """Four optimizer steps of the real PretrainModule in a Lightning Trainer; the clock is fake, so the
    logged numbers are exact."""
    import lightning as L

    from glm.tasks.pretrain import PretrainModule

    module = PretrainModule(
        model={"preset": "glm-tiny", "vocab_size": 128, "max_sequence_length": 32},
        optimizer={"lr": 1e-3},
        scheduler={"total_steps": 4},
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, 128, (4, 16), generator=g),
            "targets": torch.randint(0, 128, (4, 16), generator=g),
            "loss_mask": torch.ones(4, 16),
            "position_ids": torch.stack([torch.arange(16), torch.zeros(16, dtype=torch.long)])[None].repeat(
                4, 1, 1
            ),
            "sep": torch.tensor([8, 4, 12, 0]),
        }
        for _ in range(4)
    ]
    cb = MFUMonitor(every_n_steps=2, skip_steps=1, peak_tflops=2e-3, clock=FakeClock([100.0, 100.5, 101.5]))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[cb],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    # last window: steps 3 and 4, two micro-batches of 64 tokens in 1.0 s
    assert float(trainer.callback_metrics["perf/flops_per_s"]) == pytest.approx(2 * F, rel=1e-6)
    assert float(trainer.callback_metrics["perf/mfu"]) == pytest.approx(2 * F / 2e9, rel=1e-6)


def test_default_callbacks_config_builds_the_monitor(compose_cfg) -> None:
    from glm.run.instantiate import instantiate_group

    # the override documented in conf/callbacks/default.yaml
    cfg = compose_cfg("ci_tiny", ["+callbacks.mfu.device_peaks.MyGPU={bf16: 123.0}"])
    monitors = [c for c in instantiate_group(cfg.callbacks) if isinstance(c, MFUMonitor)]
    assert len(monitors) == 1
    peaks = monitors[0].device_peaks
    assert lookup_peak_tflops("MyGPU rev 2", "bf16", peaks) == 123.0  # added row
    assert lookup_peak_tflops("NVIDIA H100 80GB HBM3", "bf16", peaks) == 989.4  # defaults kept


def test_pretraining_counts_the_head_at_part_b_positions_only() -> None:
    """PretrainModule projects the head at the padded Part-B index only: rows x largest Part B positions."""
    from glm.tasks.pretrain import PretrainModule

    module = PretrainModule(
        model={"preset": "glm-tiny", "vocab_size": 128, "max_sequence_length": 32},
        scheduler={"total_steps": 1},
    )
    loss_mask = torch.zeros(4, 16)
    for row, sep in enumerate([8, 4, 12, 10]):  # Part B sizes 8, 12, 4, 6 -> index 4 x 12 = 48 positions
        loss_mask[row, sep:] = 1
    batch = {"input_ids": torch.zeros(4, 16, dtype=torch.long), "loss_mask": loss_mask}
    assert module.head_positions(batch) == 48
    cfg = tiny_config()
    assert cfg.head_flops_per_token() == 6 * 128 * 64  # the V x h head, forward + backward
    cb = MFUMonitor(every_n_steps=1, skip_steps=0, clock=FakeClock([0.0, 2.0]))
    trainer = SimpleNamespace(global_step=0, precision="32-true")
    recorder = Recorder(glm_config=cfg, device=torch.device("cpu"), trainer=trainer, logged=[])
    recorder.head_positions = module.head_positions
    cb.on_train_start(trainer, recorder)
    trainer.global_step = 1
    cb.on_train_batch_end(trainer, recorder, None, batch, 0)
    # 64 positions at the full formula, minus the head at the 16 positions without it, over 2 s
    assert recorder.logged == [(1, "perf/flops_per_s", pytest.approx((F - 16 * 6 * 128 * 64) / 2.0))]
