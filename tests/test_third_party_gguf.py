"""A WildGuard GGUF written the way llama.cpp's convert_hf_to_gguf.py writes it (no
wildguard_lite.* keys) loads with the reference tokenizer rebuilt from tokenizer.ggml.*."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from wildguard_lite import load  # noqa: E402
from wildguard_lite.benchmarks.data import to_item  # noqa: E402
from wildguard_lite.errors import InvalidInputError, ModelFileError  # noqa: E402
from wildguard_lite.gguf_vocab import spec_from_gguf_vocab  # noqa: E402
from wildguard_lite.tokenization import TokenizerSpec, WildGuardTokenizer  # noqa: E402

N_ROWS = 40  # held-out rows classified by both files


def _llama_cpp_vocab(folder: Path, drop: str | None = None):
    """Pieces, scores and types as convert_hf_to_gguf.py's _create_vocab_sentencepiece makes them
    (its order of checks: unknown, control, unused, byte)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        kind = gguf.TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = gguf.TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = gguf.TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = gguf.TokenType.UNUSED
        elif sp.IsByte(i):
            kind = gguf.TokenType.BYTE
        piece = sp.IdToPiece(i)
        if piece == drop:
            kind = gguf.TokenType.NORMAL  # a vocabulary where this is not a control token
        tokens.append(piece.encode("utf-8"))
        scores.append(sp.GetScore(i))
        types.append(kind)
    return tokens, scores, types


def write_llama_cpp_style(ours: Path, folder: Path, out: Path, drop_control: str | None = None) -> Path:
    """Our GGUF's hyperparameters and tensors, with the vocabulary and special ids written as
    llama.cpp's converter writes them, and none of wildguard-lite's keys."""
    reader = gguf.GGUFReader(ours)
    writer = gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if key.startswith(("GGUF.", "tokenizer.", "wildguard_lite.")) or key == "general.architecture":
            continue
        value = field.contents()
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, field.types[0])
    tokens, scores, types = _llama_cpp_vocab(folder, drop_control)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(folder, n_vocab=len(tokens)).add_to_gguf(writer)  # bos/eos/unk ids, add_bos_token
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, np.array(tensor.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def third_party(toy_gguf, toy_dir, tmp_path_factory) -> Path:
    return write_llama_cpp_style(toy_gguf["f16"], toy_dir, tmp_path_factory.mktemp("llamacpp") / "toy-f16.gguf")


def test_written_like_llama_cpp(third_party):
    keys = gguf.GGUFReader(third_party).fields
    assert not any(k.startswith("wildguard_lite.") for k in keys)
    assert "tokenizer.ggml.tokens" in keys and "tokenizer.ggml.bos_token_id" in keys


def test_ids_and_verdicts_equal_our_gguf(toy_gguf, third_party, heldout):
    items = [to_item(row) for row in heldout[:N_ROWS]]
    with load(toy_gguf["f16"], threads=2, n_ctx=1024) as ours, load(third_party, threads=2, n_ctx=1024) as theirs:
        for item in items:
            assert ours.tokenizer.encode_exchange(
                item["prompt"], item.get("response")
            ) == theirs.tokenizer.encode_exchange(item["prompt"], item.get("response"))
        assert (ours.tokenizer.yes_id, ours.tokenizer.no_id, ours.tokenizer.cue_ids) == (
            theirs.tokenizer.yes_id,
            theirs.tokenizer.no_id,
            theirs.tokenizer.cue_ids,
        )
        assert ours.classify(items) == theirs.classify(items)


@pytest.mark.parametrize(
    "legacy_fixture, legacy",
    [
        ("toy_dir", True),  # the checkpoint's tokenizer_config.json says legacy=true
        ("toy_dir_nonlegacy", False),  # ... and legacy=false: the option must match it
    ],
)
def test_rebuilt_tokenizer_matches_the_folder_in_both_legacy_modes(
    request, third_party, heldout, legacy_fixture, legacy
):
    folder = request.getfixturevalue(legacy_fixture)
    reference = WildGuardTokenizer(TokenizerSpec.from_hf_folder(folder))
    rebuilt = WildGuardTokenizer(spec_from_gguf_vocab(gguf.GGUFReader(third_party), "test", legacy=legacy))
    texts = [to_item(row) for row in heldout[:N_ROWS]] + [
        {"prompt": "  two leading spaces, [INST] inside and </s> too", "response": "\tTab\n\nand 1234 digits ünï"},
    ]
    for item in texts:
        assert reference.encode_exchange(item["prompt"], item.get("response")) == rebuilt.encode_exchange(
            item["prompt"], item.get("response")
        )
    assert reference.encode_official("[INST] Hi [/INST] x") == rebuilt.encode_official("[INST] Hi [/INST] x")


def test_missing_template_control_token_is_refused(toy_gguf, toy_dir, tmp_path):
    broken = write_llama_cpp_style(toy_gguf["f16"], toy_dir, tmp_path / "x.gguf", drop_control="[/INST]")
    with pytest.raises(ModelFileError, match=r"no control token '\[/INST\]'"):
        load(broken, threads=1)


def test_legacy_option_conflicting_with_embedded_tokenizer_is_refused(toy_gguf):
    with pytest.raises(InvalidInputError, match="legacy"):
        load(toy_gguf["f16"], legacy=False)
