"""Mixed precision (model/precision.py): which dtype each setting picks, the CPU attention form,
fp32 outputs and targets under bf16 autocast, and the precision settings of train and sample."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import AudioVAE, JointDenoisingTransformer, VideoVAE, base_denoiser_loss, from_params, make_noise_scheduler
from model.denoiser import masked_attention
from model.precision import autocast, autocast_dtype, cpu_has_native_bf16
from tasks.samples import sample_settings
from tasks.params import load_params
from tasks.runtime import UserError

from test_model import _perturbed, base_inputs


def test_each_setting_picks_its_dtype():
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    import model.precision as precision

    expected = cpu_has_native_bf16() and precision.measured_bf16_speedup() >= precision.AUTO_BF16_MIN_SPEEDUP
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if expected else None)
    assert autocast_dtype("bf16", "meta") is None  # no autocast off cpu/cuda
    with pytest.raises(ValueError, match="fp16"):
        autocast_dtype("fp16", "cpu")
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")


def test_auto_takes_bf16_only_where_it_measures_faster(monkeypatch):
    import model.precision as precision

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    for speedup, dtype in ((1.6, torch.bfloat16), (1.0, None), (1.19, None)):   # the AMD and the Xeon AMX cases
        monkeypatch.setattr(precision, "measured_bf16_speedup", lambda s=speedup: s)
        assert autocast_dtype("auto", "cpu") is dtype, speedup
        assert autocast_dtype("auto", "cpu", lambda s=speedup: 2.4 - s) is (None if dtype else torch.bfloat16)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)   # emulated bf16: not even measured
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: pytest.fail("measured without native bf16"))
    assert autocast_dtype("auto", "cpu") is None


def test_the_bf16_measurement_leaves_the_rng_alone():
    import model.precision as precision

    torch.manual_seed(5)
    speedup = precision.measure_bf16_speedup()
    after = torch.rand(3)
    torch.manual_seed(5)
    assert speedup > 0 and torch.equal(after, torch.rand(3))


def test_the_bf16_measurement_runs_inside_sampling_no_grad_and_inference_mode():
    """`precision: auto` is first asked at sampling time, under no_grad: the measurement's backward
    must still run there (it raised on a CPU with native bf16, where auto measures)."""
    import model.precision as precision

    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert precision.measure_bf16_speedup() > 0


def test_the_bf16_measurement_is_made_once_per_machine_and_shared(tmp_path, monkeypatch):
    """Every process, rank and resumed run of a machine must take the same precision: the first
    measurement is recorded (by tasks/, not model/) and every later process reads it instead of
    measuring again; training and loaded pipelines both decide "auto" from that record."""
    import model.precision as precision
    from tasks import checkpoint
    from tasks.training import training_precision

    monkeypatch.setenv("TINYVEO_CACHE_DIR", str(tmp_path))
    measured = []
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda: measured.append(1) or 1.21 + 0.5 * len(measured))
    for _ in range(3):   # three "processes": the lru cache is per process
        checkpoint.recorded_bf16_speedup.cache_clear()
        assert checkpoint.recorded_bf16_speedup() == 1.71
    assert len(measured) == 1 and checkpoint.speedup_record().parent == tmp_path
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "measured_bf16_speedup", lambda: pytest.fail("measured again in-process"))
    assert training_precision(load_params().train, torch.device("cpu")) is torch.bfloat16   # the record's 1.71
    checkpoint.recorded_bf16_speedup.cache_clear()


def test_cpu_attention_matches_sdpa_with_and_without_a_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    for m in (None, mask):
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=None if m is None else m[:, None, None, :])
        assert torch.allclose(masked_attention(q, k, v, m), expected, atol=1e-6)
    # Masked keys are not read: changing their values changes nothing.
    v2 = v.clone()
    v2[0, :, 6:] = 100.0
    assert torch.equal(masked_attention(q, k, v, mask)[0], masked_attention(q, k, v2, mask)[0])


def test_denoiser_under_bf16_autocast_is_close_to_fp32_and_returns_fp32(tiny_params):
    cfg = from_params(tiny_params)
    model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    video, audio, t, ctx = base_inputs(cfg, batch=2)
    with torch.no_grad():
        full_v, full_a = model(video, audio, t, ctx)
        with autocast("cpu", torch.bfloat16):
            half_v, half_a = model(video, audio, t, ctx)
    assert half_v.dtype == half_a.dtype == torch.float32
    assert not torch.equal(half_v, full_v)  # autocast did run in bf16
    for half, full in ((half_v, full_v), (half_a, full_a)):
        assert float((half - full).norm() / full.norm()) < 0.05


def test_bf16_training_step_is_deterministic_and_targets_stay_fp32(tiny_params):
    cfg = from_params(tiny_params)

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = _perturbed(JointDenoisingTransformer(cfg.base))
        video, audio, _, ctx = base_inputs(cfg, batch=2)
        with autocast("cpu", torch.bfloat16):
            loss = base_denoiser_loss(model, make_noise_scheduler(), video, audio, ctx, 0.1,
                                      torch.Generator().manual_seed(0)).total
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    (loss_a, grads_a), (loss_b, grads_b) = step(), step()
    assert loss_a.dtype == torch.float32 and torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))

    audio_vae = AudioVAE(cfg.audio_vae)
    wave = torch.randn(2, 1, cfg.audio_vae.num_samples, generator=torch.Generator().manual_seed(0)) * 0.3
    with autocast("cpu", torch.bfloat16):
        target = audio_vae.features(wave)
        _, video_dist = VideoVAE(cfg.video_vae)(torch.rand(1, 3, 4, 16, 16))
    assert target.dtype == torch.float32 and torch.equal(target, audio_vae.features(wave))
    assert video_dist.mean.dtype == torch.float32


def test_precision_settings_are_checked_by_name(tmp_path, prepared_data):
    from conftest import TRAIN_OVERRIDES, train

    assert sample_settings(load_params(overrides=["sample.precision=fp32"]).sample)["precision"] == "fp32"
    with pytest.raises(UserError, match="sample.precision"):
        sample_settings(load_params(overrides=["sample.precision=fp16"]).sample)
    with pytest.raises(UserError, match="train.precision"):
        train(prepared_data, tmp_path / "bad", load_params(overrides=TRAIN_OVERRIDES + ["train.precision=fp16"]))
    summary = train(prepared_data, tmp_path / "fp32", load_params(overrides=TRAIN_OVERRIDES + ["train.precision=fp32",
                    "train.vae_steps=2", "train.denoiser_steps=2"]))
    assert summary["vae"]["precision"] == summary["denoiser"]["precision"] == "fp32"
