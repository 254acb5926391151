"""The real CLIP BPE tokenizer, built offline from the vocabulary file inside open_clip_torch.

OpenAI's CLIP vocabulary (49,408 tokens) is 256 byte symbols, the same with the end-of-word mark
``</w>``, the first 48,894 merges of ``bpe_simple_vocab_16e6.txt.gz``, then ``<|startoftext|>``
(49406) and ``<|endoftext|>`` (49407), which is also the padding token. We write it out as the
``vocab.json`` + ``merges.txt`` pair that transformers' ``CLIPTokenizer`` reads, so a saved model folder
needs nothing from the network.
"""
from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-unicode map (the 256 base symbols of the vocabulary)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = {b: chr(b) for b in printable}  # printable bytes first: the vocabulary's order depends on it
    extra = [b for b in range(256) if b not in chars]
    for n, b in enumerate(extra):
        chars[b] = chr(256 + n)
    return chars


def _open_clip_bpe_path() -> Path:
    import open_clip

    return Path(os.path.dirname(open_clip.__file__)) / "bpe_simple_vocab_16e6.txt.gz"


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """(vocab token → id, merges in rank order) of OpenAI CLIP, from open_clip's shipped BPE file."""
    lines = gzip.open(_open_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # 48,894 merges after the version line
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tokenizer_files(folder: str | Path) -> Path:
    """Write CLIP's tokenizer into ``folder``: vocab.json + merges.txt (the slow format, which
    transformers turns into a fast tokenizer in ~8 s), then tokenizer.json and tokenizer_config.json
    via ``save_pretrained`` so that later loads take well under a second."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                        model_max_length=MAX_LENGTH)
    tok.save_pretrained(str(folder))
    return folder


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "latentdiff" / "clip-tokenizer"


def load_clip_tokenizer(folder: str | Path | None = None):
    """transformers' ``CLIPTokenizer`` from a saved folder; with None, CLIP's tokenizer built from
    open_clip's file (written once to ~/.cache/latentdiff/clip-tokenizer)."""
    from transformers import CLIPTokenizer

    if folder is None:
        folder = _cache_dir()
        if not (folder / "tokenizer.json").is_file():
            write_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder))


def byte_level_clip_tokenizer(folder: str | Path):
    """A ``CLIPTokenizer`` with CLIP's 256 byte symbols (plain and with ``</w>``), no merges, and CLIP's
    special tokens: every text tokenizes, one token per byte. For benchmarks and tests of random-weight
    models on machines without open_clip_torch (the GPU image); not for trained models."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                         model_max_length=MAX_LENGTH)
