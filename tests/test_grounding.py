"""The cross-attention grounding loss (latentdiff.train.grounding) and its use in the U-Net stage."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from latentdiff.models.tokenizer import load_clip_tokenizer
from latentdiff.train.grounding import CrossAttnCapture, grounding_loss, instance_map, token_objects, word_token_spans


@pytest.fixture(scope="module")
def tok():
    return load_clip_tokenizer(None)


def _words_of(tok, caption, objs, length=32):
    """{object index: the caption's words whose tokens name it}."""
    out = token_objects(tok, caption, objs, length)
    words = caption.replace(",", " ").split()
    spans = word_token_spans(tok, " ".join(words))
    named = {}
    for w, (a, b) in zip(words, spans):
        ks = set(out[a:b].tolist())
        assert len(ks) == 1, (w, ks)  # a word's tokens all name the same object
        k = ks.pop()
        if k >= 0:
            named.setdefault(k, []).append(w)
    return named


def test_word_spans_cover_the_tokenization(tok):
    caption = "a large orange triangle in the bottom right"
    spans = word_token_spans(tok, caption)
    ids = tok(caption).input_ids
    assert spans[0][0] == 1 and spans[-1][1] == len(ids) - 1  # BOS before, EOS after
    assert all(a < b for a, b in spans) and all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_token_objects_follow_the_grammar(tok):
    one = _words_of(tok, "a small red circle in the top left", [("red", "circle")])
    assert one == {0: ["small", "red", "circle", "top", "left"]}
    # a relation: "left of" is not a position; box order differs from caption order
    rel = _words_of(tok, "a red circle left of an orange square", [("orange", "square"), ("red", "circle")])
    assert rel == {1: ["red", "circle"], 0: ["orange", "square"]}
    three = _words_of(tok, "a green square at the left, a large blue circle in the center and a white triangle "
                           "in the bottom", [("white", "triangle"), ("green", "square"), ("blue", "circle")])
    assert three == {1: ["green", "square", "left"], 2: ["large", "blue", "circle", "center"],
                     0: ["white", "triangle", "bottom"]}
    # two objects of the same kind cannot be told apart by their words: left out
    assert _words_of(tok, "a red circle and a red circle", [("red", "circle"), ("red", "circle")]) == {}
    assert (token_objects(tok, "", [("red", "circle")], 32) == -1).all()


def test_instance_map_separates_objects_by_box():
    seg = np.zeros((64, 64), np.uint8)
    seg[2:14, 2:14] = 1
    seg[30:52, 30:52] = 2
    inst = instance_map(seg, [(30, 30, 52, 52), (2, 2, 14, 14)])
    assert (inst[30:52, 30:52] == 1).all() and (inst[2:14, 2:14] == 2).all()
    assert inst.sum() == 22 * 22 * 1 + 12 * 12 * 2


def _maps(b, heads, side, length, where=None):
    """Attention probabilities (B·heads, side², L): uniform, or all mass on pixel ``where`` for every token."""
    p = torch.full((b * heads, side * side, length), 1.0 / length)
    if where is not None:
        p = torch.zeros(b * heads, side * side, length)
        p[:, where, :] = 1.0
    return p


def test_grounding_loss_is_zero_inside_and_large_outside():
    inst = torch.zeros(2, 64, 64, dtype=torch.uint8)
    inst[:, 0:16, 0:16] = 1  # the object fills the top-left 4×4 cell of a 16×16 map... at side 4: pixel 0
    token_obj = torch.full((2, 8), -1, dtype=torch.int8)
    token_obj[:, 2:4] = 0
    keep = torch.tensor([True, True])
    inside = grounding_loss([_maps(2, 2, 4, 8, where=0)], token_obj, inst, keep)
    outside = grounding_loss([_maps(2, 2, 4, 8, where=15)], token_obj, inst, keep)
    uniform = grounding_loss([_maps(2, 2, 4, 8)], token_obj, inst, keep)
    assert inside.item() == pytest.approx(0.0, abs=1e-6)
    assert outside.item() == pytest.approx(1.0, abs=1e-6)
    assert uniform.item() == pytest.approx(1 - 1 / 16, abs=1e-6)
    # a dropped caption and tokens of no object add nothing
    none = grounding_loss([_maps(2, 2, 4, 8, where=15)], token_obj, inst, torch.tensor([False, False]))
    assert none.item() == 0.0


def test_capture_matches_the_classic_processor_and_keeps_cross_maps():
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 32),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8).eval()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 16)
    unet.set_attn_processor(AttnProcessor())
    ref = unet(x, t, encoder_hidden_states=ctx).sample
    cap = CrossAttnCapture.attach(unet)
    cap.active = True
    out = unet(x, t, encoder_hidden_states=ctx).sample
    maps = cap.take()
    assert torch.allclose(out, ref, atol=1e-5)
    n_cross = sum(1 for name, _ in unet.attn_processors.items() if "attn2" in name)
    assert len(maps) == n_cross > 0
    assert all(m.shape[-1] == 5 and torch.allclose(m.sum(-1), torch.ones(())) for m in maps)
    cap.active = False
    unet(x, t, encoder_hidden_states=ctx)
    assert cap.take() == []


def test_unet_stage_trains_with_the_grounding_loss(tmp_path):
    """configs/tiny.yaml with grounding_loss: the whole recipe runs on shapes data and the loss is logged."""
    import subprocess
    import sys
    from pathlib import Path

    from latentdiff.data.shapes import write_dataset

    root = Path(__file__).resolve().parents[1]
    data = write_dataset(tmp_path / "data", 24, seed=5, workers=1)
    first_loss = {}
    for weight in (0.0, 0.5):
        raw = yaml.safe_load((root / "configs" / "tiny.yaml").read_text())
        out = tmp_path / f"run{weight}"
        raw["out"], raw["data"]["folder"], raw["data"]["holdout"] = str(out), str(data), 4
        raw["unet"]["grounding_loss"] = weight
        raw["unet"]["loop"].update(steps=2, validate_every=0)
        cfg = tmp_path / f"cfg{weight}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        proc = subprocess.run([sys.executable, "-m", "latentdiff.cli", "train", str(cfg)], capture_output=True,
                              text=True, cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (out / "model" / "model_index.json").is_file()
        first_loss[weight] = json.loads((out / "unet" / "log.jsonl").read_text().splitlines()[0])["loss"]
    # the same seed draws the same first batch: the difference is 0.5 × the grounding loss, in (0, 0.5]
    assert 0.0 < first_loss[0.5] - first_loss[0.0] <= 0.5, first_loss


def test_grounding_min_t_leaves_out_the_low_noise_samples():
    """grounding_min_t: the loss counts only samples with t >= min_t (checked on the stage's loss)."""
    from diffusers import UNet2DConditionModel

    from latentdiff.diffusion.schedule import Schedule, linear_betas
    from latentdiff.train.stages import LatentDenoisingStage

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=8, norm_num_groups=8)

    class Stage(LatentDenoisingStage):
        cond_dropout, min_snr_gamma = 0.0, None

    n, length = 4, 6
    stage = Stage()
    stage.model = unet
    stage.device, stage.data_device, stage.schedule, stage.scaling_factor = (
        torch.device("cpu"), torch.device("cpu"), Schedule.from_betas(linear_betas(10)), 1.0)
    stage.mean, stage.std = torch.randn(n, 4, 8, 8), torch.zeros(n, 4, 8, 8)
    stage.contexts, stage.null_context = torch.randn(n, length, 16), torch.zeros(length, 16)
    stage.caption_index = torch.arange(n)
    token_obj = torch.full((n, length), -1, dtype=torch.int8)
    token_obj[:, 1:3] = 0
    inst = torch.zeros(n, 32, 32, dtype=torch.uint8)
    inst[:, :8, :8] = 1
    losses = {}
    for min_t in (0, 10):  # 10 = beyond every t of a 10-step schedule: no sample counts
        stage.set_grounding(1.0, token_obj, inst, min_t=min_t)
        losses[min_t] = stage.loss(unet, torch.arange(n), torch.Generator().manual_seed(0)).item()
    stage.grounding_weight = 0.0
    plain = stage.loss(unet, torch.arange(n), torch.Generator().manual_seed(0)).item()
    assert losses[10] == pytest.approx(plain, rel=1e-5) and losses[0] > plain + 0.1


def test_grounding_data_needs_boxes(tmp_path):
    from latentdiff.data.folder import Record
    from latentdiff.errors import UserError
    from latentdiff.train.run import grounding_data

    rec = Record(tmp_path / "a.png", "a red circle", None, None, 1)
    with pytest.raises(UserError, match="a.png.*line 1.*no boxes"):
        grounding_data([rec], load_clip_tokenizer(None), 64)
