"""model/: every seed component at the article's shapes, determinism, gradients, guidance."""
from __future__ import annotations

import pytest
import torch

from model import (
    AudioVAE, DenoiserInputs, FinalLayer, JointDenoisingTransformer, TextEmbedding, TimestepEmbedding, TransformerBlock, VideoVAE,
    base_denoiser_loss, from_params, make_noise_scheduler, sample_latents, upsampler_loss, video_reconstruction_loss,
)
from model.denoiser import PatchTransformer
from model.layers import factorised_attention


def random_context(batch: int, tokens: int, dim: int = 384, seed: int = 0, valid: int | None = None) -> TextEmbedding:
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(batch, tokens, dim, generator=g)
    mask = torch.zeros(batch, tokens, dtype=torch.bool)
    mask[:, : valid or tokens] = True
    return TextEmbedding(states.mean(1), states, mask)


def base_inputs(cfg, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, *cfg.base.video_latent_shape, generator=g)
    audio = torch.randn(batch, *cfg.base.audio_latent_shape, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    return video, audio, t, DenoiserInputs(random_context(batch, cfg.base.max_text_tokens, seed=seed, valid=5))


def test_article_latent_shapes(article_params):
    cfg = from_params(article_params)
    assert cfg.base.video_latent_shape == (4, 8, 4, 4)
    assert cfg.upsampler.video_latent_shape == (4, 8, 8, 8)
    assert cfg.upsampler.low_res_latent_shape == (4, 8, 4, 4)
    assert cfg.base.audio_latent_shape == (8, 16)


@pytest.mark.parametrize("size", [32, 64])
def test_video_vae_round_trip_shapes(article_params, size):
    cfg = from_params(article_params)
    vae = VideoVAE(cfg.video_vae).eval().requires_grad_(False)
    video = torch.rand(1, 3, 16, size, size)
    z = vae.encode(video)
    assert z.shape == (1, 4, 8, size // 8, size // 8)
    out = vae.decode(z)
    assert out.shape == video.shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert vae.encode_image(video[:, :, 0]).shape == (1, 4, size // 8, size // 8)


def test_video_vae_posterior_sample_vs_mode(tiny_params):
    vae = VideoVAE(from_params(tiny_params).video_vae).eval()
    video = torch.rand(2, 3, 16, 32, 32)
    assert torch.equal(vae.encode(video), vae.encode(video))  # mode is deterministic
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    assert not torch.equal(vae.encode(video, sample=True, generator=g1), vae.encode(video, sample=True, generator=g2))
    assert float(vae.encode_dist(video).kl()) >= 0.0


def test_video_reconstruction_loss_weights_what_moves():
    video = torch.zeros(1, 3, 8, 8, 8)
    video[:, :, :, 0, 0] = 0.5                    # a still pixel, lit in every frame
    video[:, :, 3, 5, 5] = 1.0                    # an object passing one pixel in one frame
    still_miss, moving_miss = video.clone(), video.clone()
    still_miss[:, :, 3, 0, 0] = 0.0
    moving_miss[:, :, 3, 5, 5] = 0.5              # the same squared error, on the moving pixel
    assert video_reconstruction_loss(still_miss, video) == video_reconstruction_loss(moving_miss, video)
    assert torch.equal(video_reconstruction_loss(moving_miss, video), torch.nn.functional.mse_loss(moving_miss, video))
    weighted = video_reconstruction_loss(moving_miss, video, motion_weight=10.0)
    assert weighted == pytest.approx(11.0 * float(video_reconstruction_loss(still_miss, video, motion_weight=10.0)))


def test_scaling_factor_is_saved_with_the_weights(tiny_params):
    vae = VideoVAE(from_params(tiny_params).video_vae)
    latents = torch.randn(64, 4, 8, 16, 16) * 3.0
    factor = vae.set_scaling_factor(latents)
    assert factor == pytest.approx(1 / 3.0, rel=0.05)
    state = vae.state_dict()
    assert "scaling_factor" in state
    fresh = VideoVAE(from_params(tiny_params).video_vae)
    fresh.load_state_dict(state)
    assert float(fresh.scaling_factor) == pytest.approx(factor)
    # encode scales, decode unscales: the same latent round-trips through both conventions
    video = torch.rand(1, 3, 16, 32, 32)
    assert torch.allclose(fresh.encode(video), fresh.encode_dist(video).mode() * factor)


def test_audio_vae_shapes_and_range(article_params):
    cfg = from_params(article_params)
    vae = AudioVAE(cfg.audio_vae).eval()
    t = torch.arange(32000) / 16000
    wave = (0.8 * torch.sin(2 * torch.pi * 440 * t)).reshape(1, 1, -1)
    assert vae.features(wave).shape == (1, 64, 64)
    z = vae.encode(wave)
    assert z.shape == (1, 8, 16)
    out = vae.decode(z)
    assert out.shape == (1, 1, 32000)
    assert float(out.abs().max()) <= 1.0 + 1e-6
    assert torch.equal(out, vae.decode(z))  # Griffin-Lim without random init: deterministic


def test_audio_features_invert_to_the_right_pitch(tiny_params):
    """The phase-free log-mel + Griffin-Lim path keeps pitch: 880 Hz comes back as 880 Hz."""
    vae = AudioVAE(from_params(tiny_params).audio_vae)
    t = torch.arange(32000) / 16000
    wave = torch.sin(2 * torch.pi * 880 * t).reshape(1, 1, -1)
    back = vae.features_to_waveform(vae.features(wave))[0, 0]
    spectrum = torch.fft.rfft(back).abs()
    peak_hz = float(spectrum.argmax()) * 16000 / back.numel()
    assert abs(peak_hz - 880) < 40


def test_timestep_embedding_shape():
    emb = TimestepEmbedding(32)
    assert emb(torch.tensor([0, 10, 999])).shape == (3, 128)


def test_transformer_block_starts_as_identity():
    block = TransformerBlock(32, 4)
    x, c = torch.randn(2, 10, 32), torch.randn(2, 32)
    assert torch.equal(block(x, c), x)
    final = FinalLayer(32, 12)
    assert torch.count_nonzero(final(x, c)) == 0


@pytest.mark.parametrize("fixture", ["article_params", "tiny_params"])
def test_denoisers_output_input_shapes(fixture, request):
    cfg = from_params(request.getfixturevalue(fixture))
    base = JointDenoisingTransformer(cfg.base).eval()
    video, audio, t, ctx = base_inputs(cfg, batch=2)
    pred_v, pred_a = base(video, audio, t, ctx)
    assert pred_v.shape == video.shape and pred_a is not None and pred_a.shape == audio.shape

    up = JointDenoisingTransformer(cfg.upsampler).eval()
    hr = torch.randn(2, *cfg.upsampler.video_latent_shape)
    pred_up, none = up(hr, None, t, ctx.replace(low_res_video=video, low_res_noise_level=torch.tensor([0, 100])))
    assert pred_up.shape == hr.shape and none is None


def test_eval_forward_is_deterministic_and_positions_are_fixed(tiny_params):
    cfg = from_params(tiny_params)
    torch.manual_seed(0)
    model = JointDenoisingTransformer(cfg.base).eval()
    with torch.no_grad():  # move off the zero init so outputs depend on every input
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    video, audio, t, ctx = base_inputs(cfg)
    out1 = model(video, audio, t, ctx)
    out2 = model(video, audio, t, ctx)
    assert torch.equal(out1[0], out2[0]) and torch.equal(out1[1], out2[1])
    # positions are derived from the config: two fresh models agree exactly, and they are not parameters
    other = JointDenoisingTransformer(cfg.base)
    assert torch.equal(model.patch_transformer.pos_embed, other.patch_transformer.pos_embed)
    assert "patch_transformer.pos_embed" not in model.state_dict()


def test_wrong_token_count_is_an_error_not_random_positions(tiny_params):
    cfg = from_params(tiny_params)
    pt = PatchTransformer(cfg.base)
    n = pt.pos_embed.shape[1]
    with pytest.raises(ValueError, match="does not match"):
        pt(torch.randn(1, n + 3, cfg.base.dim), torch.randn(1, cfg.base.dim))


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_gradients_reach_every_trainable_parameter(tiny_params):
    cfg = from_params(tiny_params, image_feature_dim=16)
    scheduler = make_noise_scheduler()
    g = torch.Generator().manual_seed(0)
    b = 8  # with dropout 0.5, some rows keep their condition and some take the null one
    image_latent = torch.randn(b, *cfg.base.image_latent_shape, generator=g)
    has_image = torch.tensor([True] * 6 + [False] * 2)
    image_features = torch.randn(b, 16, generator=g)
    ctx = random_context(b, cfg.base.max_text_tokens, valid=5)
    inputs = DenoiserInputs(ctx, image_latent=image_latent, has_image=has_image, image_features=image_features)
    # adaLN-Zero starts every gate at 0, which blocks gradients to the blocks' inner weights;
    # a small perturbation stands in for "after a few optimiser steps".
    base = _perturbed(JointDenoisingTransformer(cfg.base))
    loss = base_denoiser_loss(
        base, scheduler, torch.randn(b, *cfg.base.video_latent_shape, generator=g),
        torch.randn(b, *cfg.base.audio_latent_shape, generator=g), inputs, cond_dropout=0.5, generator=g,
    )
    loss.total.backward()
    missing = [n for n, p in base.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached: {missing}"

    up = _perturbed(JointDenoisingTransformer(cfg.upsampler))
    up_image = torch.randn(b, *cfg.upsampler.image_latent_shape, generator=g)
    up_loss = upsampler_loss(
        up, scheduler, torch.randn(b, *cfg.upsampler.video_latent_shape, generator=g),
        torch.randn(b, *cfg.base.video_latent_shape, generator=g), inputs.replace(image_latent=up_image),
        max_noise_aug=250, cond_dropout=0.5, generator=g,
    )
    up_loss.backward()
    missing = [n for n, p in up.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient reached: {missing}"


def test_frozen_vaes_stay_bit_identical_through_a_denoiser_step(tiny_params):
    cfg = from_params(tiny_params)
    vae = VideoVAE(cfg.video_vae).requires_grad_(False).eval()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    base = JointDenoisingTransformer(cfg.base)
    opt = torch.optim.AdamW(base.parameters(), lr=1e-3)
    video = torch.rand(2, 3, cfg.num_frames, cfg.base_size, cfg.base_size)
    latent = vae.encode(video)
    loss = base_denoiser_loss(base, make_noise_scheduler(), latent, torch.randn(2, *cfg.base.audio_latent_shape),
                              DenoiserInputs(random_context(2, cfg.base.max_text_tokens)))
    loss.total.backward()
    opt.step()
    assert all(p.grad is None for p in vae.parameters())
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())


def test_image_tokens_are_masked_for_items_without_an_image(tiny_params):
    cfg = from_params(tiny_params)
    model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    video, audio, t, ctx = base_inputs(cfg)
    image = torch.randn(1, *cfg.base.image_latent_shape)
    no_image = model(video, audio, t, ctx)[0]
    masked = model(video, audio, t, ctx.replace(image_latent=image, has_image=torch.tensor([False])))[0]
    used = model(video, audio, t, ctx.replace(image_latent=image, has_image=torch.tensor([True])))[0]
    assert torch.allclose(no_image, masked, atol=1e-6)
    assert not torch.allclose(no_image, used, atol=1e-4)


def test_positions_masked_in_every_row_are_left_out_with_the_same_result(tiny_params):
    cfg = from_params(tiny_params)
    model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    video, audio, t, ctx = base_inputs(cfg, batch=2)  # 5 of the caption tokens used, no image
    seen = []
    hook = model.patch_transformer.transformer_blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    alone_v, alone_a = model(video, audio, t, ctx)
    # A third row with a full caption and an input image uses every position, so nothing is left out.
    g = torch.Generator().manual_seed(1)
    extra = random_context(1, cfg.base.max_text_tokens, seed=1)
    c = ctx.caption
    both = TextEmbedding(torch.cat([c.pooled, extra.pooled]), torch.cat([c.tokens, extra.tokens]),
                         torch.cat([c.mask, extra.mask]))
    image = torch.randn(3, *cfg.base.image_latent_shape, generator=g)
    full_v, full_a = model(torch.cat([video, video[:1]]), torch.cat([audio, audio[:1]]), torch.cat([t, t[:1]]),
                           DenoiserInputs(both, image_latent=image, has_image=torch.tensor([False, False, True])))
    hook.remove()
    n_text, n_image = cfg.base.max_text_tokens, cfg.base.image_grid[0] * cfg.base.image_grid[1]
    assert seen == [model.patch_transformer.pos_embed.shape[1] - (n_text - 5) - n_image, model.patch_transformer.pos_embed.shape[1]]
    assert torch.allclose(alone_v, full_v[:2], atol=1e-5) and torch.allclose(alone_a, full_a[:2], atol=1e-5)


def test_classifier_free_guidance(tiny_params):
    cfg = from_params(tiny_params)
    model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    video, audio, t, ctx = base_inputs(cfg, batch=2)
    cond_v, cond_a = model(video, audio, t, ctx)
    null_v, null_a = model(video, audio, t, ctx.replace(drop=torch.ones(2, dtype=torch.bool)))
    assert not torch.allclose(cond_v, null_v, atol=1e-4)
    g1_v, g1_a = model.forward_with_cfg(video, audio, t, ctx.with_null_rows(), guidance=1.0)
    assert torch.allclose(g1_v, cond_v, atol=1e-5) and torch.allclose(g1_a, cond_a, atol=1e-5)
    g4_v, g4_a = model.forward_with_cfg(video, audio, t, ctx.with_null_rows(), guidance=4.0)
    assert torch.allclose(g4_v, null_v + 4.0 * (cond_v - null_v), atol=1e-5)
    assert torch.allclose(g4_a, null_a + 4.0 * (cond_a - null_a), atol=1e-5)


def test_guidance_interval_guides_only_inside_it(tiny_params):
    cfg = from_params(tiny_params)
    scheduler = make_noise_scheduler()
    base = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    ctx = DenoiserInputs(random_context(2, cfg.base.max_text_tokens, valid=4))
    calls: list[tuple[int, float]] = []
    forward, forward_with_cfg = base.forward, base.forward_with_cfg

    def spy_cfg(video, audio, t, inputs, guidance):
        calls.append((int(t[0]), guidance))
        return forward_with_cfg(video, audio, t, inputs, guidance)

    def spy(video, audio, t, inputs):
        if inputs.drop is None:  # the plain conditional forward, not the one inside forward_with_cfg
            calls.append((int(t[0]), 1.0))
        return forward(video, audio, t, inputs)

    base.forward_with_cfg, base.forward = spy_cfg, spy  # type: ignore[method-assign]

    def run(**kw):
        calls.clear()
        v, a = sample_latents(base, scheduler, ctx, sampler="dpm", steps=4, generator=torch.Generator().manual_seed(0), **kw)
        return v, list(calls)

    everywhere, _ = run(guidance=3.0)
    whole_range, _ = run(guidance=3.0, guidance_interval=(0, 1000))
    assert torch.equal(everywhere, whole_range)
    unguided, _ = run(guidance=1.0)
    empty, scales = run(guidance=3.0, guidance_interval=(1000, 1000))
    assert torch.equal(unguided, empty) and {g for _, g in scales} == {1.0}
    partial, scales = run(guidance=3.0, guidance_interval=(500, 1000))
    assert [g for _, g in scales] == [3.0 if t >= 500 else 1.0 for t, _ in scales]
    assert {g for _, g in scales} == {1.0, 3.0}  # 4 DPM steps span the range: both kinds ran
    assert not torch.equal(partial, everywhere) and not torch.equal(partial, unguided)
    with pytest.raises(ValueError, match="guidance_interval"):
        run(guidance=3.0, guidance_interval=(800, 700))


def test_sampler_refines_the_caption_once_per_kind(tiny_params):
    cfg = from_params(tiny_params)
    scheduler = make_noise_scheduler()
    base = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    ctx = DenoiserInputs(random_context(2, cfg.base.max_text_tokens, valid=4))
    refiner_calls = []
    base.input_proj.text_refiner.register_forward_hook(lambda *_: refiner_calls.append(1))

    def run():
        refiner_calls.clear()
        v, a = sample_latents(base, scheduler, ctx, sampler="dpm", steps=4, guidance=3.0, guidance_interval=(500, 1000),
                              generator=torch.Generator().manual_seed(0))
        return v, a, len(refiner_calls)

    v, a, calls = run()
    assert calls == 2  # guided (cond + null rows) and conditional-only, each once over 4 steps
    base.with_caption_state = lambda inputs: inputs  # type: ignore[method-assign]  (refined at every step)
    v_uncached, a_uncached, calls = run()
    assert calls == 4  # once per step without the cache
    assert torch.equal(v, v_uncached) and torch.equal(a, a_uncached)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm"])
def test_sampler_shapes_and_seed_determinism(tiny_params, sampler):
    cfg = from_params(tiny_params)
    scheduler = make_noise_scheduler()
    base = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    up = _perturbed(JointDenoisingTransformer(cfg.upsampler)).eval()
    ctx = DenoiserInputs(random_context(2, cfg.base.max_text_tokens, valid=4))

    def run(seed: int):
        g = torch.Generator().manual_seed(seed)
        v, a = sample_latents(base, scheduler, ctx, sampler=sampler, steps=4, guidance=3.0, generator=g)
        hr, _ = sample_latents(up, scheduler, ctx.replace(low_res_video=v), sampler=sampler, steps=4, guidance=3.0,
                               generator=g)
        return v, a, hr

    v, a, hr = run(0)
    assert v.shape == (2, *cfg.base.video_latent_shape) and a is not None and a.shape == (2, *cfg.base.audio_latent_shape)
    assert hr.shape == (2, *cfg.upsampler.video_latent_shape)
    assert torch.isfinite(v).all() and torch.isfinite(a).all() and torch.isfinite(hr).all()
    v2, a2, hr2 = run(0)
    assert torch.equal(v, v2) and torch.equal(a, a2) and torch.equal(hr, hr2)
    v3, _, _ = run(1)
    assert not torch.equal(v, v3)


def test_upsampler_requires_its_low_res_input(tiny_params):
    cfg = from_params(tiny_params)
    up = JointDenoisingTransformer(cfg.upsampler)
    hr = torch.randn(1, *cfg.upsampler.video_latent_shape)
    with pytest.raises(ValueError, match="low_res_video"):
        up(hr, None, torch.tensor([5]), DenoiserInputs(random_context(1, cfg.base.max_text_tokens)))


def test_caption_word_order_reaches_the_condition(tiny_params):
    """Mean pooling cannot tell "from left to right" from "from right to left"; the refiner can."""
    from model.denoiser import TextRefiner

    torch.manual_seed(0)
    refiner = TextRefiner(context_dim=16, dim=32, heads=2, depth=1, max_tokens=8).eval()
    tokens = torch.randn(1, 8, 16)
    swapped = tokens.clone()
    swapped[:, [2, 4]] = tokens[:, [4, 2]]
    mask = torch.tensor([[True] * 6 + [False] * 2])
    assert torch.allclose(tokens[mask].mean(0), swapped[mask].mean(0), atol=1e-6)
    _, pooled = refiner(tokens, mask)
    _, pooled_swapped = refiner(swapped, mask)
    assert not torch.allclose(pooled, pooled_swapped, atol=1e-3)
    # Padding is ignored: changing what sits in padded positions changes nothing.
    padded = tokens.clone()
    padded[:, 6:] = 100.0
    assert torch.allclose(refiner(padded, mask)[1], pooled, atol=1e-5)


@pytest.mark.parametrize("axis", ["space", "time"])
def test_factorised_attention_is_full_attention_restricted_to_frame_or_place(axis):
    g = torch.Generator().manual_seed(0)
    others, (t, s), b, h, dh = 7, (3, 5), 2, 2, 8
    n = others + t * s
    q, k, v = (torch.randn(b, h, n, dh, generator=g) for _ in range(3))
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 2], mask[1, 5:7] = False, False          # caption padding, different per row
    allowed = torch.ones(n, n, dtype=torch.bool)     # non-video queries see everything
    frame, place = torch.arange(t * s) // s, torch.arange(t * s) % s
    same = frame[:, None] == frame[None, :] if axis == "space" else place[:, None] == place[None, :]
    allowed[others:, others:] = same                 # video queries: every non-video key, their own group
    scores = (q * dh ** -0.5) @ k.transpose(-1, -2)
    expected = scores.masked_fill(~(allowed[None, None] & mask[:, None, None, :]), float("-inf")).softmax(-1) @ v
    assert torch.allclose(factorised_attention(q, k, v, mask, (t, s), axis), expected, atol=1e-5)


def test_factorised_denoiser_keeps_a_space_block_within_its_frame(tiny_params):
    # One block (a "space" block): the video prediction for one token frame depends on the noisy
    # video of that frame only, and on the caption and audio; with full attention, on every frame.
    def frames_changed(attention: str) -> list[bool]:
        params = tiny_params.replace("denoiser.base.video_patch", [4, 2, 2]).replace("denoiser.base.attention", attention)
        cfg = from_params(params)
        torch.manual_seed(0)
        model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
        video, audio, t, ctx = base_inputs(cfg)
        bumped = video.clone()
        bumped[:, :, 4:8] += 1.0                      # latent frames 4-7: the second token frame
        a, b = model(video, audio, t, ctx)[0], model(bumped, audio, t, ctx)[0]
        return [not torch.allclose(a[:, :, i:i + 4], b[:, :, i:i + 4], atol=1e-6) for i in range(0, 16, 4)]

    assert frames_changed("factorised") == [False, True, False, False]
    assert frames_changed("full") == [True, True, True, True]


def test_unknown_attention_is_an_error(tiny_params):
    with pytest.raises(ValueError, match="full or factorised"):
        from_params(tiny_params.replace("denoiser.base.attention", "windowed"))


@pytest.mark.parametrize("in_adaln, sentence", [(True, True), (True, False), (False, True)])
def test_the_caption_reaches_adaln_as_configured(tiny_params, in_adaln, sentence):
    """caption_in_adaln false: the caption reaches adaLN not at all; sentence_in_adaln false: only
    through the refiner's pool, so the encoder's sentence vector reaches nothing. The tokens always do."""
    from dataclasses import replace

    cfg = from_params(tiny_params)
    video, audio, t, inputs = base_inputs(cfg, batch=2)
    ctx = inputs.caption
    other_pooled = DenoiserInputs(TextEmbedding(ctx.pooled + 3.0, ctx.tokens, ctx.mask))
    other_tokens = DenoiserInputs(TextEmbedding(ctx.pooled, ctx.tokens + 3.0, ctx.mask))
    config = replace(cfg.base, caption_in_adaln=in_adaln, sentence_in_adaln=sentence)
    model = _perturbed(JointDenoisingTransformer(config)).eval()
    with torch.no_grad():
        out = model(video, audio, t, inputs)[0]
        assert torch.equal(out, model(video, audio, t, other_pooled)[0]) is not (in_adaln and sentence)
        assert not torch.equal(out, model(video, audio, t, other_tokens)[0])
        state = model.input_proj.caption(inputs)
        _, refined_pool = model.input_proj.text_refiner(*_standardised_tokens(model, inputs))
    if not in_adaln:
        assert torch.equal(state.cond, torch.zeros_like(refined_pool))
    elif not sentence:
        assert torch.equal(state.cond, refined_pool)
    else:
        assert not torch.allclose(state.cond, refined_pool)


def test_a_model_without_the_sentence_path_neither_builds_it_nor_refuses_saved_weights_of_it(tiny_params):
    """Unused layers get no gradient (and DDP would need find_unused_parameters); weights saved by a
    model that built them unused, as before 2026-12-08, still load."""
    from dataclasses import replace

    cfg = from_params(tiny_params)
    with_sentence = JointDenoisingTransformer(replace(cfg.base, sentence_in_adaln=True, caption_in_adaln=True))
    for off in (dict(sentence_in_adaln=False), dict(caption_in_adaln=False)):
        model = JointDenoisingTransformer(replace(cfg.base, **off))
        names = set(model.state_dict())
        assert not any("c_embedder" in n or "null_pooled" in n for n in names)
        model.load_state_dict(with_sentence.state_dict())   # strict: only the sentence path's keys are extra
        assert torch.equal(model.input_proj.null_token, with_sentence.input_proj.null_token)


def _standardised_tokens(model, inputs):
    p = model.input_proj
    return (inputs.caption.tokens - p.token_mean) / p.token_std, inputs.caption.mask


@pytest.mark.parametrize("kernel, rows", [(1, [3]), (3, [2, 3, 4])])
def test_the_refiner_kernel_sets_which_tokens_one_input_mixes(kernel, rows):
    """With no attention layer, a bumped caption token moves only the refined rows its convolution reaches."""
    from model.denoiser import TextRefiner

    torch.manual_seed(0)
    refiner = TextRefiner(context_dim=16, dim=32, heads=2, depth=0, max_tokens=8, kernel=kernel).eval()
    tokens, mask = torch.randn(1, 8, 16), torch.ones(1, 8, dtype=torch.bool)
    bumped = tokens.clone()
    bumped[:, 3] += 1.0
    with torch.no_grad():
        moved = (refiner(bumped, mask)[0] - refiner(tokens, mask)[0]).abs().amax(-1)[0]
    assert (moved > 1e-6).nonzero().flatten().tolist() == rows


def test_an_even_refiner_kernel_is_an_error(tiny_params):
    with pytest.raises(ValueError, match="text_refiner_kernel"):
        from_params(tiny_params.replace("denoiser.base.text_refiner_kernel", 2))


def test_text_statistics_standardise_and_travel_with_the_weights(tiny_params):
    cfg = from_params(tiny_params)
    ctx = random_context(64, cfg.base.max_text_tokens, valid=5)
    pooled = ctx.pooled * 3 + 7
    model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    model.set_text_statistics(pooled, ctx.tokens * 2 - 1, ctx.mask)
    p = model.input_proj
    standardised = (pooled - p.pooled_mean) / p.pooled_std
    assert torch.allclose(standardised.mean(0), torch.zeros(384), atol=1e-4)
    assert torch.allclose(standardised.std(0), torch.ones(384), atol=1e-4)
    copy = JointDenoisingTransformer(cfg.base).eval()
    copy.load_state_dict(model.state_dict())  # the statistics are part of the saved weights
    video, audio, t, one = base_inputs(cfg)
    assert torch.equal(copy(video, audio, t, one)[0], model(video, audio, t, one)[0])


def test_each_model_has_its_own_prediction_target():
    from model import noise_schedulers
    from model.diffusion import diffusion_target
    from tasks.params import DiffusionParams

    d = DiffusionParams(prediction_type="v_prediction", upsampler_prediction_type=None)
    base, up = noise_schedulers(d)
    assert base.config.prediction_type == up.config.prediction_type == "v_prediction"
    base, up = noise_schedulers(DiffusionParams(prediction_type="v_prediction", upsampler_prediction_type="sample"))
    assert (base.config.prediction_type, up.config.prediction_type) == ("v_prediction", "sample")
    x0, noise, t = torch.randn(2, 4), torch.randn(2, 4), torch.tensor([10, 900])
    assert torch.equal(diffusion_target(up, x0, noise, t), x0)
    assert not torch.allclose(diffusion_target(base, x0, noise, t), x0)


def test_logit_normal_timesteps_move_the_training_noise_levels():
    from model.diffusion import _timesteps

    draw = lambda **kw: _timesteps(4000, 1000, torch.Generator().manual_seed(0), torch.device("cpu"), **kw)  # noqa: E731
    uniform, centred, high = draw(), draw(logit_mean=0.0), draw(logit_mean=1.0)
    for t in (uniform, centred, high):
        assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    assert abs(uniform.float().mean() - 500) < 20 and abs(centred.float().mean() - 500) < 20
    assert high.float().mean() > 650                      # sigmoid(N(1, 1)) has mean ~0.70
    assert (centred - 500).abs().float().mean() < (uniform - 500).abs().float().mean()  # mass moves to the middle
    assert torch.equal(high, draw(logit_mean=1.0))         # seeded


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_inverts_every_target(kind):
    from model.diffusion import diffusion_target, predicted_x0

    scheduler = make_noise_scheduler(prediction_type=kind)
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g), torch.tensor([5, 500, 950])
    noisy = scheduler.add_noise(x0, noise, t)
    assert torch.allclose(predicted_x0(scheduler, noisy, diffusion_target(scheduler, x0, noise, t), t), x0, atol=1e-4)


def test_self_conditioning_reads_the_previous_estimate(tiny_params):
    params = tiny_params.replace("denoiser.base.self_condition", True)
    params = params.replace("denoiser.upsampler.self_condition", True)  # base only: the upsampler ignores it
    cfg = from_params(params)
    assert cfg.base.self_condition and not cfg.upsampler.self_condition
    model = _perturbed(JointDenoisingTransformer(cfg.base)).eval()
    video, audio, t, ctx = base_inputs(cfg, batch=2)
    plain_v, plain_a = model(video, audio, t, ctx)
    zero_v, zero_a = model(video, audio, t, ctx.with_self_condition(torch.zeros_like(video), torch.zeros_like(audio)))
    assert torch.equal(plain_v, zero_v) and torch.equal(plain_a, zero_a)  # no estimate yet = zeros
    prev_v, prev_a = model(video, audio, t, ctx.with_self_condition(torch.randn_like(video), torch.randn_like(audio)))
    assert not torch.allclose(plain_v, prev_v, atol=1e-4) and not torch.allclose(plain_a, prev_a, atol=1e-4)

    scheduler = make_noise_scheduler(prediction_type="sample")
    model.train()
    video8, audio8, _, ctx8 = base_inputs(cfg, batch=8)  # about half of the items get an estimate
    losses = [base_denoiser_loss(model, scheduler, video8, audio8, ctx8, generator=torch.Generator().manual_seed(3))
              for _ in range(2)]
    assert torch.equal(losses[0].total, losses[1].total)
    losses[0].total.backward()
    patcher = model.input_proj.video_patcher.weight  # (D, 2C, ...): noisy latent and previous estimate
    assert patcher.shape[1] == 2 * cfg.base.video_latent_shape[0]
    assert patcher.grad[:, cfg.base.video_latent_shape[0]:].abs().sum() > 0  # the estimate was fed in training

    model.eval()
    runs = [sample_latents(model, scheduler, ctx, steps=3, guidance=2.0, generator=torch.Generator().manual_seed(1))
            for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.isfinite(runs[0][0]).all()


def test_token_layout_is_the_one_place_the_order_lives(tiny_params):
    from model import TokenLayout

    cfg = from_params(tiny_params)
    base, up = TokenLayout.from_config(cfg.base), TokenLayout.from_config(cfg.upsampler)
    assert base.names == ["text", "image", "video", "audio"] and up.names == ["text", "image", "video"]
    assert len(base) == PatchTransformer(cfg.base).pos_embed.shape[1]
    assert base.slice("video").stop == base.slice("audio").start == len(base) - cfg.base.audio_tokens
    with pytest.raises(KeyError, match="audio"):
        up.slice("audio")


def test_denoiser_inputs_null_rows_and_select(tiny_params):
    cfg = from_params(tiny_params)
    image = torch.randn(3, *cfg.base.image_latent_shape)
    inputs = DenoiserInputs(random_context(3, cfg.base.max_text_tokens), image_latent=image,
                            has_image=torch.tensor([True, False, True]))
    doubled = inputs.with_null_rows()
    assert doubled.batch_size == 6 and doubled.drop.tolist() == [False] * 3 + [True] * 3
    assert torch.equal(doubled.image_latent, torch.cat([image, image])) and doubled.caption_state is None
    picked = inputs.select(torch.tensor([2, 0]))
    assert picked.batch_size == 2 and torch.equal(picked.image_latent, image[[2, 0]])
    assert picked.has_image.tolist() == [True, True]
    previous = torch.randn(3, *cfg.base.video_latent_shape)
    assert torch.equal(doubled.with_self_condition(previous, None).self_cond_video, torch.cat([previous, previous]))


def test_flow_matching_target_and_forward_process():
    from model.diffusion import add_noise, diffusion_target, predicted_x0, training_timesteps

    scheduler = make_noise_scheduler(prediction_type="flow")
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(3, 4, 2, generator=g), torch.randn(3, 4, 2, generator=g), torch.tensor([0.0, 500.0, 1000.0])
    noisy = add_noise(scheduler, x0, noise, t)
    assert torch.allclose(noisy[0], x0[0]) and torch.allclose(noisy[1], (x0[1] + noise[1]) / 2)
    assert torch.allclose(noisy[2], noise[2])
    assert torch.allclose(predicted_x0(scheduler, noisy, diffusion_target(scheduler, x0, noise, t), t), x0, atol=1e-5)
    draw = lambda s: training_timesteps(make_noise_scheduler(prediction_type="flow", flow_shift=s), 4000,  # noqa: E731
                                        torch.Generator().manual_seed(0), torch.device("cpu"))
    plain, shifted = draw(1.0), draw(3.0)
    assert plain.dtype == torch.float32 and 0 < float(plain.min()) and float(plain.max()) <= 1000
    assert abs(float(plain.mean()) - 500) < 20 and float(shifted.mean()) > 650  # a shift moves training to high noise


@pytest.mark.parametrize("sampler", ["dpm", "euler"])
def test_flow_samplers_reach_the_data_of_an_exact_velocity(tiny_params, sampler):
    """Data = one point c: the exact velocity is (x_t - c) / s, and every flow sampler must land on c
    (a wrong sigma convention between training and sampling lands elsewhere)."""
    cfg = from_params(tiny_params)
    base = JointDenoisingTransformer(cfg.base).eval()
    c_video, c_audio = torch.full(cfg.base.video_latent_shape, 0.7), torch.full(cfg.base.audio_latent_shape, -0.3)

    def exact(video, audio, t, inputs):
        s = (t.float() / 1000).view(-1, 1, 1, 1, 1)
        return (video - c_video) / s, (audio - c_audio) / s.view(-1, 1, 1)

    base.forward = exact  # type: ignore[method-assign]
    ctx = DenoiserInputs(random_context(2, cfg.base.max_text_tokens, valid=4))
    v, a = sample_latents(base, make_noise_scheduler(prediction_type="flow"), ctx, sampler=sampler, steps=6,
                          guidance=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(v, c_video.expand_as(v), atol=1e-3) and torch.allclose(a, c_audio.expand_as(a), atol=1e-3)
    with pytest.raises(ValueError, match="flow"):
        sample_latents(base, make_noise_scheduler(prediction_type="flow"), ctx, sampler="ddim", steps=2)


def test_a_flow_model_trains_and_samples(tiny_params):
    params = tiny_params.replace("diffusion.prediction_type", "flow")
    cfg = from_params(params)
    from model import noise_schedulers

    scheduler, up_scheduler = noise_schedulers(params.diffusion)
    model, up = _perturbed(JointDenoisingTransformer(cfg.base)), _perturbed(JointDenoisingTransformer(cfg.upsampler))
    video, audio, _, ctx = base_inputs(cfg, batch=2)
    loss = base_denoiser_loss(model, scheduler, video, audio, ctx, generator=torch.Generator().manual_seed(0))
    low = torch.randn(2, *cfg.upsampler.low_res_latent_shape)
    up_loss = upsampler_loss(up, up_scheduler, torch.randn(2, *cfg.upsampler.video_latent_shape), low, ctx, 250,
                             generator=torch.Generator().manual_seed(0))
    (loss.total + up_loss).backward()
    assert torch.isfinite(loss.total) and torch.isfinite(up_loss)
    assert model.input_proj.t_embedder[0].mlp[0].weight.grad.abs().sum() > 0  # float timesteps reach the embedding
    v, a = sample_latents(model.eval(), scheduler, ctx, steps=3, guidance=2.0,
                          generator=torch.Generator().manual_seed(1))
    hr, _ = sample_latents(up.eval(), up_scheduler, ctx.replace(low_res_video=v), steps=3, guidance=2.0,
                           generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(v).all() and torch.isfinite(a).all() and hr.shape == (2, *cfg.upsampler.video_latent_shape)
