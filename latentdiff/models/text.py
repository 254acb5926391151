"""Prompt encoding: text → CLIP tokens → the text encoder's hidden states, as Stable Diffusion does it.

One home for turning prompts into conditions, so that generation, inpainting, layout phrases and replay
encode a prompt the same way: tokens padded with the tokenizer's pad token to the encoder's context
(77 for CLIP) and truncated past it, with a :class:`PromptTruncatedWarning` naming the dropped words.
The attention mask is passed only to text encoders whose config asks for it (``use_attention_mask``),
as diffusers' ``StableDiffusionPipeline`` does. :func:`latentdiff.conditioning.text_conditioning` turns the
hidden states into a :class:`~latentdiff.conditioning.Conditioning`.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from latentdiff.limits import Limits


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder's context and its end was dropped."""


def max_length(text_encoder) -> int:
    """The text encoder's context in tokens (77 for CLIP), start and end tokens included."""
    return int(text_encoder.config.max_position_embeddings)


def tokenize(tokenizer, text_encoder, prompts: list[str]):
    """The tokenizer's output for ``prompts``, padded to and truncated at the encoder's context: input_ids
    and attention_mask (B, L) as tensors."""
    return tokenizer(list(prompts), padding="max_length", max_length=max_length(text_encoder), truncation=True,
                     return_tensors="pt")


def warn_if_truncated(tokenizer, text_encoder, prompt: str) -> None:
    """Warn (:class:`PromptTruncatedWarning`) when ``prompt`` has more tokens than the encoder's context."""
    length = max_length(text_encoder)
    ids = tokenizer(prompt, add_special_tokens=False, verbose=False).input_ids
    keep = length - 2  # <|startoftext|> … <|endoftext|>
    if len(ids) > keep:
        dropped = tokenizer.decode(ids[keep:]).strip()
        warnings.warn(f"prompt is longer than {length} tokens; dropped {len(ids) - keep} tokens: '{dropped}'",
                      PromptTruncatedWarning, stacklevel=4)


@torch.inference_mode()
def encode_prompt(tokenizer, text_encoder, prompts: list[str], limits: Limits | None = None) -> Tensor:
    """The text encoder's last hidden state for each prompt, as Stable Diffusion: (B, 77, D).

    Each prompt is checked as text first (:meth:`latentdiff.limits.Limits.check_text`, against ``limits``
    or the defaults), so a hostile prompt never reaches the tokenizer."""
    limits = limits or Limits()
    for p in dict.fromkeys(prompts):
        limits.check_text(p, "prompt")
        warn_if_truncated(tokenizer, text_encoder, p)
    tok = tokenize(tokenizer, text_encoder, prompts)
    ids = tok.input_ids.to(text_encoder.device)  # (B, 77)
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tok.attention_mask.to(ids.device)
    return text_encoder(ids, attention_mask=mask)[0]  # (B, 77, D)

