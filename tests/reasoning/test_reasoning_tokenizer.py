"""The two tokenizers behind ``prepare``: the built-in byte tokenizer and a local Hugging Face ``tokenizer.json``."""

from __future__ import annotations

import numpy as np
import pytest

from nemo_smartpt.reasoning.tokenizer import ByteTokenizer, HFTokenizer, TokenizerError, load_tokenizer


def make_hf_tokenizer(directory, special=("<|endoftext|>", "<pad>")) -> str:
    """A small BPE trained offline on a few sentences, saved as ``directory/tokenizer.json``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", *special], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["What is 2 + 3? <think> add </think> The answer is 5.", "def f():\n    return 1", "Neon is a gas."]
    tok.train_from_iterator(corpus * 20, trainer)
    path = directory / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_byte_tokenizer_round_trip():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer)
    assert (tok.vocab_size, tok.eod, tok.pad) == (258, 256, 257)
    text = "café <think>"
    (ids,) = tok.encode_batch([text])
    assert ids == list(text.encode()) and tok.decode([*ids, tok.eod]) == text
    np.testing.assert_array_equal(tok.encode_arrays([text])[0], ids)
    assert "ByteTokenizer" in tok.unique_identifiers["class"]


def test_hf_tokenizer_from_file_and_directory(tmp_path):
    path = make_hf_tokenizer(tmp_path)
    for spec in (path, str(tmp_path)):
        tok = load_tokenizer(spec)
        assert isinstance(tok, HFTokenizer)
        assert tok.eod == tok._tok.token_to_id("<|endoftext|>") and tok.pad == tok._tok.token_to_id("<pad>")
        ids = tok.encode_batch(["The answer is 5.", "Neon"])
        assert tok.decode(ids[0]) == "The answer is 5." and tok.eod not in ids[0]
        assert [a.tolist() for a in tok.encode_arrays(["The answer is 5.", "Neon"])] == ids
        assert tok.unique_identifiers["path"] == path


def test_hf_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no such file"):
        load_tokenizer(str(tmp_path / "missing"))
    path = make_hf_tokenizer(tmp_path, special=("<s>",))
    with pytest.raises(TokenizerError, match="eod_token"):
        load_tokenizer(path)
    tok = load_tokenizer(path, eod_token="<s>")
    assert tok.eod == tok.pad == tok._tok.token_to_id("<s>")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot load"):
        load_tokenizer(str(tmp_path / "bad.json"))
    with pytest.raises(TokenizerError, match="byte"):
        load_tokenizer("byte", eod_token="</s>")
