"""CLIP's BPE tokenizer built offline from open_clip's vocabulary file gives open_clip's token ids."""
import open_clip

from latentdiff.models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, load_clip_tokenizer, write_tokenizer_files


def test_tokenizer_matches_open_clip(tmp_path):
    tok = load_clip_tokenizer(write_tokenizer_files(tmp_path / "tok"))
    assert len(tok) == VOCAB_SIZE and tok.bos_token_id == BOS_ID and tok.eos_token_id == EOS_ID == tok.pad_token_id
    ref = open_clip.get_tokenizer("ViT-B-32")
    for text in ["a small red circle in the top left", "A Yellow star, left of a cyan-triangle!!", "héllo wörld 123 ☃"]:
        ours = tok(text, padding="max_length", max_length=77, truncation=True).input_ids
        theirs = ref([text])[0].tolist()
        n = ours.index(EOS_ID) + 1  # open_clip pads with 0, SD-style CLIPTokenizer with <|endoftext|>
        assert ours[:n] == theirs[:n] and len(ours) == 77
