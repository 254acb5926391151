"""A cross-attention grounding loss: each object word of a caption should attend inside its object.

The denoising loss trains the link from position words to places only weakly: where an object goes is
decided at high noise, where the ε error barely depends on it (issue #27, BENCHMARKS.md). The data knows
every object's mask, so the link can be trained directly, at every t: for each token j of an object's
words (size, colour, shape and, after "in/at the", position) and each cross-attention layer, with a_j the
token's attention map normalised over the layer's pixels p and m the object's mask pooled to the layer's
resolution (scaled to peak 1),

    L_ground = mean over layers, tokens j of  1 − Σ_p a_j(p) · m(p)

(the token loss of TokenCompose, Wang et al. CVPR 2024). A caption dropped to the empty prompt and a token
of no object ("a", "and", relation words, padding) adds nothing.

Pieces: :class:`CrossAttnCapture` (an attention processor that keeps the cross-attention probabilities),
:func:`token_objects` (which object each token names), :func:`instance_map` (object index per pixel) and
:func:`grounding_loss`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from latentdiff.data.shapes import COLOURS, POSITIONS, SHAPES, SIZES

MAX_OBJECTS = 3
_POSITION_WORDS = frozenset(w for p in POSITIONS for w in p.split())
_OBJECT_WORDS = frozenset(SIZES) | frozenset(COLOURS) | frozenset(SHAPES)


class CrossAttnCapture(AttnProcessor):
    """diffusers' classic attention computation (baddbmm, softmax, bmm) that also keeps every
    cross-attention layer's probabilities, (B·heads, HW, L), in ``maps`` while ``active``. One instance is
    shared by all layers of a model (:meth:`attach`)."""

    def __init__(self):
        super().__init__()
        self.maps: list[torch.Tensor] = []
        self.active = False

    @classmethod
    def attach(cls, unet) -> "CrossAttnCapture":
        capture = cls()
        unet.set_attn_processor(capture)
        return capture

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        if encoder_hidden_states is None or not self.active:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.residual_connection \
                or hidden_states.ndim != 3 or attention_mask is not None:
            raise RuntimeError("CrossAttnCapture: only a transformer block's plain cross-attention is supported")
        ctx = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k, v = attn.head_to_batch_dim(attn.to_k(ctx)), attn.head_to_batch_dim(attn.to_v(ctx))
        probs = attn.get_attention_scores(q, k, None)  # (B·heads, HW, L)
        self.maps.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


def word_token_spans(tokenizer, caption: str) -> list[tuple[int, int]]:
    """Token index range [a, b) of each word of ``caption`` in the tokenizer's ids (BOS at 0)."""
    words = caption.split()
    count = lambda text: len(tokenizer(text, truncation=False).input_ids) - 1  # noqa: E731  (BOS + words)
    return [(count(" ".join(words[:i])) if i else 1, count(" ".join(words[:i + 1]))) for i in range(len(words))]


def token_objects(tokenizer, caption: str, objects: list[tuple[str, str]], length: int) -> np.ndarray:
    """(length,) int8: for each token of ``caption``, the index into ``objects`` ((colour, shape) per
    object, in the data's box order) of the object its word describes, or −1.

    A caption's objects are its article-led phrases ("a"/"an" ... up to the next one); a phrase names its
    object by colour and shape. Words that belong to it: size, colour, shape, and position words after
    "the". A phrase whose (colour, shape) is missing from ``objects`` or not unique there is left out."""
    out = np.full(length, -1, np.int8)
    words = caption.lower().replace(",", " ").split()
    spans = word_token_spans(tokenizer, " ".join(words))
    phrases: list[list[int]] = []
    for i, w in enumerate(words):
        if w in ("a", "an"):
            phrases.append([])
        elif phrases:
            phrases[-1].append(i)
    for phrase in phrases:
        named = [words[i] for i in phrase]
        kind = next(((c, s) for c in COLOURS for s in SHAPES if c in named and s in named), None)
        if kind is None or objects.count(kind) != 1:
            continue
        k = objects.index(kind)
        after_the = False
        for i in phrase:
            w = words[i]
            after_the = after_the or w == "the"
            if w in ("left", "right") and not after_the:
                break  # "left of"/"right of": a relation; the next phrase starts after it
            if w in _OBJECT_WORDS or (after_the and w in _POSITION_WORDS):
                a, b = spans[i]
                out[a:min(b, length)] = k
    return out


def instance_map(segmap: np.ndarray, boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """(H, W) uint8: 1 + the index of the box whose object covers each pixel (segmap > 0 inside the box),
    0 elsewhere."""
    out = np.zeros(segmap.shape, np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes[:MAX_OBJECTS]):
        ys, xs = slice(max(int(y0), 0), int(np.ceil(y1))), slice(max(int(x0), 0), int(np.ceil(x1)))
        region = out[ys, xs]
        region[(segmap[ys, xs] > 0) & (region == 0)] = k + 1
    return out


def grounding_loss(maps: list[torch.Tensor], token_obj: torch.Tensor, instances: torch.Tensor,
                   keep: torch.Tensor) -> torch.Tensor:
    """L_ground of the module docstring. maps: per layer (B·heads, HW, L); token_obj: (B, L) int (−1: no
    object); instances: (B, H, W) uint8 (:func:`instance_map`); keep: (B,) bool, False where the caption
    was dropped. Returns a scalar float32 tensor (0 when no token of the batch names an object)."""
    b = token_obj.shape[0]
    sel = (token_obj >= 0) & keep[:, None]  # (B, L)
    if not maps or not bool(sel.any()):
        return torch.zeros((), device=instances.device)
    onehot_tok = F.one_hot(token_obj.long().clamp(min=0), MAX_OBJECTS).float() * sel[..., None]  # (B, L, K)
    objs = F.one_hot(instances.long(), MAX_OBJECTS + 1)[..., 1:].permute(0, 3, 1, 2).float()  # (B, K, H, W)
    losses = []
    for probs in maps:
        a = probs.float().view(b, probs.shape[0] // b, *probs.shape[1:]).mean(1)  # (B, HW, L)
        side = int(round(a.shape[1] ** 0.5))
        m = F.adaptive_avg_pool2d(objs, side).flatten(2)  # (B, K, HW)
        m = m / m.amax(2, keepdim=True).clamp(min=1e-6)
        a = a / a.sum(1, keepdim=True).clamp(min=1e-8)  # each token's map sums to 1 over pixels
        inside = torch.einsum("bpl,blk,bkp->bl", a, onehot_tok, m)  # (B, L): mass inside its object
        losses.append(((1 - inside) * sel).sum() / sel.sum())
    return torch.stack(losses).mean()
