"""convert_hf.py: export loads in transformers' Auto classes with identical logits; import back."""

import subprocess
import sys

import pytest
import torch

from src.model.checkpoint import CheckpointError, load_model, save_checkpoint
from src.model.hf_convert import import_hf
from src.model.transformer_block import WikiMiniModel
from tests.conftest import REPO_ROOT, tiny_model_config

transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -r requirements.txt)")


@pytest.mark.parametrize("qk_norm", [False, True])
def test_export_then_auto_classes_then_import(tiny_checkpoint, tokenizer, tmp_path, qk_norm):
    if qk_norm:  # goes out as Qwen3, Llama plus per-head q/k norms
        torch.manual_seed(0)
        tiny_checkpoint = save_checkpoint(tmp_path / "qk.pth", WikiMiniModel(tiny_model_config(qk_norm=True)), tokenizer)
    out_dir = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "convert_hf.py", "export", "--checkpoint", str(tiny_checkpoint), "--output", str(out_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out_dir / "model.safetensors").exists() and (out_dir / "config.json").exists()

    ours = load_model(tiny_checkpoint)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), attn_implementation="eager").eval()
    assert hf_model.config.model_type == ("qwen3" if qk_norm else "llama")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir))
    text = "Once upon a time, a little girl named Lily 😀 found a ball."
    ids = ours.tokenizer.encode(text).ids
    assert hf_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tokenizer.eos_token == "<|endoftext|>" and hf_tokenizer.pad_token == "<|pad|>"
    tokens = torch.tensor([ids])
    with torch.no_grad():
        assert (hf_model(tokens).logits - ours.model(tokens)).abs().max().item() <= 1e-4

    back = import_hf(out_dir, tmp_path / "back.pth")
    reloaded = load_model(back)
    assert reloaded.config == ours.config
    assert reloaded.eos_id == ours.eos_id
    with torch.no_grad():
        assert (reloaded.model(tokens) - ours.model(tokens)).abs().max().item() <= 1e-6


def test_import_rejects_non_llama_and_non_model_dirs(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        import_hf(tmp_path, tmp_path / "x.pth")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(tmp_path / "gpt2"))
    with pytest.raises(CheckpointError, match="only Llama and Qwen3 models"):
        import_hf(tmp_path / "gpt2", tmp_path / "x.pth")
