"""int8 weight-only inference: close to the full-precision model, on logits and on held-out loss."""

import pytest
import torch
import torch.nn.functional as F

from src.device import inference_precision
from src.generation import Generator, SamplingParams
from src.model import WikiMiniModel
from src.model.checkpoint import DEMO_CHECKPOINT, load_model
from src.model.quantize import Int8Linear, quantize_int8, quantize_rows
from tests.conftest import TINY_STORIES, tiny_model_config


def test_rows_round_trip_within_half_a_step():
    weight = torch.randn(64, 48)
    quantized, scales = quantize_rows(weight)
    assert quantized.dtype == torch.int8 and quantized.abs().max() <= 127
    error = (quantized.float() * scales[:, None] - weight).abs()
    assert (error <= scales[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("dense_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_int8_linear_equals_matmul_with_the_dequantized_weight(rows, dense_dtype):
    torch.manual_seed(0)
    weight = torch.randn(96, 64) * 0.05
    layer = Int8Linear(weight, dense_dtype=dense_dtype)
    assert layer.weight_dequantized.dtype == dense_dtype
    x = torch.randn(2, rows, 64).bfloat16()
    quantized, scales = quantize_rows(weight)
    reference = F.linear(x.float(), quantized.float() * scales[:, None])
    out = layer(x)
    assert out.shape == (2, rows, 96) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=2e-2)


def test_quantized_model_logits_stay_close_to_fp32():
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config()).eval()
    x = torch.randint(0, 384, (2, 20))
    with torch.inference_mode():
        reference = model(x).float()
        parameters = model.num_parameters()
        quantize_int8(model)
        quantized = model(x).float()
    assert all(not isinstance(m, torch.nn.Linear) for m in model.modules())
    assert model.num_parameters() == parameters  # int8 weights still count, the tied head once
    relative = (quantized - reference).norm() / reference.norm()
    assert relative < 0.02
    assert (quantized.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


def test_dense_weights_are_fp32_where_the_cpu_has_no_bf16_matmul(monkeypatch):
    """Emulated bf16 matmuls are several times slower than fp32: prefill and batches use fp32."""
    import src.model.quantize as quantize

    for native, expected in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(quantize, "native_bf16_cpu", lambda native=native: native)
        model = quantize_int8(WikiMiniModel(tiny_model_config()).eval())
        assert model.output.weight_dequantized.dtype == expected
        assert model.output.scales.dtype == torch.bfloat16  # the int8 kernel's activations


def test_auto_precision_and_errors():
    cpu = torch.device("cpu")
    assert inference_precision(cpu, "fp32") == "fp32"
    assert inference_precision(cpu, "auto") == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        inference_precision(torch.device("cuda"), "int8")
    with pytest.raises(ValueError, match="unknown precision"):
        inference_precision(cpu, "int4")


@pytest.mark.skipif(not DEMO_CHECKPOINT.exists(), reason="needs the bundled demo model (checkpoints/demo/), which a full clone has")
def test_demo_model_int8_loses_under_one_percent_of_perplexity():
    """On the bundled trained model, int8 weights barely move held-out loss or greedy stories."""
    text = " ".join(TINY_STORIES)
    losses, stories = {}, {}
    for precision in ("fp32", "int8"):
        loaded = load_model(DEMO_CHECKPOINT, precision=precision)
        ids = torch.tensor([[loaded.eos_id] + loaded.tokenizer.encode(text).ids])
        with torch.inference_mode():
            _, loss = loaded.model(ids[:, :-1], ids[:, 1:])
        losses[precision] = float(loss)
        greedy = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=20, stop_at_eos=False)
        stories[precision] = Generator.from_loaded(loaded).generate("Once upon a time", greedy).token_ids
        assert loaded.precision == precision
    assert abs(losses["int8"] - losses["fp32"]) < 0.01 * losses["fp32"]
    assert losses["fp32"] < 3.5  # a trained model, so the comparison means something
    agree = sum(a == b for a, b in zip(stories["int8"], stories["fp32"]))
    assert agree >= 10  # the first greedy tokens agree (later ones may fork after a near-tie)


@pytest.mark.parametrize("flags, onednn, expected", [
    ("avx2 fma avx512f avx512_vnni", True, False),  # oneDNN says yes, but it would emulate bf16
    ("avx2 avx512f avx512_bf16", True, True),
    ("avx2 amx_bf16 amx_tile", True, True),
    ("fp asimd asimddp bf16", True, True),  # ARMv8.6
    ("", True, True),  # no /proc/cpuinfo (macOS): oneDNN decides
    ("avx512_bf16", False, False),
])
def test_native_bf16_needs_the_instructions_not_only_onednn(monkeypatch, flags, onednn, expected):
    """Plain AVX512 CPUs pass oneDNN's bf16 check, yet bf16 training there runs slower than fp32."""
    import src.device as device

    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn, raising=False)
    assert device.native_bf16_cpu() is expected
