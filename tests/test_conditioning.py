"""ConditioningEncoder: both backends offline, frozen, clear errors for missing checkpoints."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import ConditioningEncoder, MissingCheckpointError

PROMPT = "A red circle glides from left to right while a high beep plays"
PARAPHRASE = "A crimson disc slides left to right as a high tone plays"
UNRELATED = "A blue square drops from top to bottom with a low hum"


@pytest.fixture(scope="module")
def minilm():
    return ConditioningEncoder("minilm", None, max_length=32)


def test_minilm_loads_offline_and_separates_paraphrases(minilm):
    emb = minilm.get_text_embeds([PROMPT, PARAPHRASE, UNRELATED])
    assert emb.pooled.shape == (3, 384)
    assert emb.tokens.shape == (3, 32, 384)
    assert emb.mask.dtype == torch.bool and bool(emb.mask[:, 0].all())
    para = F.cosine_similarity(emb.pooled[0], emb.pooled[1], dim=0)
    unrelated = F.cosine_similarity(emb.pooled[0], emb.pooled[2], dim=0)
    assert para > unrelated


def test_encoder_is_frozen_and_deterministic(minilm):
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.training and not minilm.model.training
    a, b = minilm.get_text_embeds(PROMPT), minilm.get_text_embeds(PROMPT)
    assert torch.equal(a.tokens, b.tokens)


def test_minilm_has_no_image_tower(minilm):
    with pytest.raises(ValueError, match="backend=clip"):
        minilm.get_image_embeds(torch.rand(1, 3, 32, 32))


def test_tiny_clip_text_and_image(tiny_clip_dir):
    enc = ConditioningEncoder("clip", str(tiny_clip_dir), max_length=16)
    emb = enc.get_text_embeds([PROMPT, UNRELATED])
    assert emb.pooled.shape == (2, 32) and emb.tokens.shape == (2, 16, 32)
    assert enc.text_dim == 32 and enc.image_dim == 16
    # the real CLIP BPE: the same ids as open_clip's own tokenizer, between start and end tokens
    from open_clip.tokenizer import SimpleTokenizer

    ids = enc.tokenizer(PROMPT)["input_ids"]
    assert ids[0] == 49406 and ids[-1] == 49407
    assert ids[1:-1] == SimpleTokenizer().encode(PROMPT)
    image = enc.get_image_embeds(torch.rand(3, 3, 32, 32))
    assert image.shape == (3, 16)
    assert enc.get_text_features([PROMPT]).shape == (1, 16)
    assert not any(p.requires_grad for p in enc.parameters())


def test_missing_clip_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "no-such-clip"
    with pytest.raises(MissingCheckpointError, match=str(missing)):
        ConditioningEncoder("clip", str(missing))
    with pytest.raises(MissingCheckpointError, match="conditioning.clip_path"):
        ConditioningEncoder("clip", None)


def test_missing_minilm_folder_names_the_path(tmp_path):
    with pytest.raises(MissingCheckpointError, match="conditioning.minilm_path"):
        ConditioningEncoder("minilm", str(tmp_path / "absent"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="minilm' or 'clip"):
        ConditioningEncoder("ul2")


def _standardised_distance(emb, i: int, j: int) -> float:
    real = emb.tokens[emb.mask]
    tokens = (emb.tokens - real.mean(0)) / real.std(0)
    return float((tokens[i] - tokens[j]).norm())


def test_token_layer_keeps_word_order_the_last_layer_merges(minilm):
    """Why `conditioning.token_layer` exists: MiniLM's last layer nearly merges "left" and "right"
    in context; a middle layer keeps the swap as distinct as a colour change."""
    swapped = PROMPT.replace("from left to right", "from right to left")
    recoloured = PROMPT.replace("red", "blue")
    middle = ConditioningEncoder("minilm", None, max_length=32, token_layer=2)
    last, mid = minilm.get_text_embeds([PROMPT, swapped, recoloured]), middle.get_text_embeds([PROMPT, swapped, recoloured])
    assert torch.equal(last.pooled, mid.pooled)  # the pooled sentence vector is always the last layer's
    assert not torch.equal(last.tokens, mid.tokens)
    order_vs_colour_last = _standardised_distance(last, 0, 1) / _standardised_distance(last, 0, 2)
    order_vs_colour_mid = _standardised_distance(mid, 0, 1) / _standardised_distance(mid, 0, 2)
    assert order_vs_colour_last < 0.5 < order_vs_colour_mid


def test_token_layer_out_of_range_is_named(tiny_clip_dir):
    with pytest.raises(ValueError, match="token_layer=7"):
        ConditioningEncoder("minilm", None, token_layer=7)
    from tasks.params import ConditioningParams

    enc = ConditioningEncoder.from_params(ConditioningParams(backend="clip", clip_path=str(tiny_clip_dir),
                                                             max_text_tokens=16, token_layer=0))
    assert enc.get_text_embeds([PROMPT]).tokens.shape == (1, 16, 32)


def test_clip_last_token_layer_is_its_normalised_output(tiny_clip_dir):
    enc = ConditioningEncoder("clip", str(tiny_clip_dir), max_length=16)
    inputs = enc.tokenizer([PROMPT], padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = enc.model.text_model(**inputs).last_hidden_state
    assert torch.allclose(enc.get_text_embeds([PROMPT]).tokens, expected)
