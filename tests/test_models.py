from __future__ import annotations

import pytest

from icl_toolkit.errors import ModelNotFoundError
from icl_toolkit.models import embedder_path, load_tokenizer, smollm2_gguf_path


def test_embedded_files_resolve_without_network() -> None:
    gguf = smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert (embedder_path() / "modules.json").is_file()


def test_default_tokenizer_round_trips(lm_tokenizer) -> None:
    ids = lm_tokenizer("HbA1c 7.4 % (-0.3y)", add_special_tokens=False)["input_ids"]
    assert 3 < len(ids) < 20
    assert lm_tokenizer.decode(ids) == "HbA1c 7.4 % (-0.3y)"
    assert lm_tokenizer.chat_template, "the instruct model's chat template survives the conversion"


def test_local_folder_and_unknown_names(tmp_path, lm_tokenizer) -> None:
    lm_tokenizer.save_pretrained(tmp_path / "tok")
    tok = load_tokenizer(str(tmp_path / "tok"))
    assert tok("abc")["input_ids"] == lm_tokenizer("abc")["input_ids"]
    with pytest.raises(ModelNotFoundError, match="Unknown model 'no-such/model-xyz'"):
        load_tokenizer("no-such/model-xyz")
