"""Continuous batching: requests decoded together give what each gives alone, and what an
independent reference (transformers' Llama, full recompute, no cache) predicts."""

import pytest
import torch

from src.generation import Generator, SamplingParams
from src.generation.batch import DecodeBatch
from src.model import WikiMiniModel
from tests.conftest import native_library_or_skip, tiny_model_config

PROMPTS = ["Once upon a time", "The dog", "Lily found a red ball in the garden and she"]


@pytest.fixture()
def generator(tokenizer):
    torch.manual_seed(0)
    return Generator(WikiMiniModel(tiny_model_config(max_seq_len=32)).eval(), tokenizer)


def run_batch(generator, requests, joins=None, slots=4):
    """Step until every request is done; `joins` maps step number -> requests admitted then."""
    batch = DecodeBatch(generator.model, generator.eos_id, slots=slots)
    batch.admit(requests)
    joins = dict(joins or {})
    everyone = list(requests) + [r for step in sorted(joins) for r in joins[step]]
    step = 0
    while batch.requests or joins:
        batch.admit(joins.pop(step, []))
        batch.step()
        step += 1
    return [r.generated for r in everyone]


def alone(generator, prompt, params, seed):
    return generator.generate(prompt, params.replace(seed=seed)).token_ids


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=20, stop_at_eos=False),
    SamplingParams(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.2, max_new_tokens=20, stop_at_eos=False),
])
def test_batched_requests_equal_each_request_alone(generator, params):
    requests = [generator.new_request(generator.encode_prompt(p), params, seed=i) for i, p in enumerate(PROMPTS)]
    together = run_batch(generator, requests)
    assert together == [alone(generator, p, params, i) for i, p in enumerate(PROMPTS)]


def test_requests_sharing_a_prompt_are_prefilled_once_and_still_equal_each_alone(generator):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=15, stop_at_eos=False)
    prompts = ["Once upon a time", "The dog", "Once upon a time", "Once upon a time", "The dog"]
    requests = [generator.new_request(generator.encode_prompt(p), params, seed=i) for i, p in enumerate(prompts)]
    batch = DecodeBatch(generator.model, generator.eos_id, slots=5)
    prefilled = []
    original = batch._prefill
    batch._prefill = lambda start, windows, **k: prefilled.append(len(windows)) or original(start, windows, **k)
    batch.admit(requests)
    assert prefilled == [2]  # two distinct windows prefilled, three rows copied
    while batch.requests:
        batch.step()
    assert [r.generated for r in requests] == [alone(generator, p, params, i) for i, p in enumerate(prompts)]
    assert len({tuple(r.generated) for r in requests}) == 5  # different seeds, different stories


def test_requests_joining_and_leaving_mid_batch_are_unaffected(generator):
    """Different lengths, limits and settings; rows are moved when a request leaves early."""
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=5, stop_at_eos=False),
        SamplingParams(temperature=0.9, top_k=0, top_p=1.0, max_new_tokens=40, stop_at_eos=False),
        SamplingParams(temperature=0.7, top_k=10, top_p=0.8, max_new_tokens=25, stop_at_eos=False),
        SamplingParams(temperature=1.2, top_k=5, top_p=1.0, repetition_penalty=1.5, max_new_tokens=30, stop_at_eos=False),
    ]
    prompts = PROMPTS + ["A big dog wanted to play"]
    requests = [generator.new_request(generator.encode_prompt(p), q, seed=10 + i)
                for i, (p, q) in enumerate(zip(prompts, params))]
    together = run_batch(generator, requests[:2], joins={3: requests[2:3], 7: requests[3:]})
    expected = [alone(generator, p, q, 10 + i) for i, (p, q) in enumerate(zip(prompts, params))]
    assert together == expected
    assert [len(t) for t in together] == [5, 40, 25, 30]  # 40 > context 32: rows slid


def test_cancelled_request_leaves_and_others_continue(generator):
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, stop_at_eos=False)
    requests = [generator.new_request(generator.encode_prompt(p), params, seed=0) for p in PROMPTS]
    batch = DecodeBatch(generator.model, generator.eos_id, slots=3)
    batch.admit(requests)
    batch.step()
    requests[0].cancelled = True
    while batch.requests:
        batch.step()
    assert requests[0].finish_reason == "cancelled" and len(requests[0].generated) == 2  # prefill + 1 step
    assert [r.generated for r in requests[1:]] == [alone(generator, p, params, 0) for p in PROMPTS[1:]]


@pytest.mark.parametrize("native", [False, True], ids=["eager", "native"])
def test_ragged_step_logits_match_hf_llama_full_recompute(tokenizer, native):
    """Each row of a ragged decode step (eager, and the native step) equals transformers'
    LlamaForCausalLM on that row's whole context without a cache."""
    from src.model.hf_convert import to_hf_model

    if native:
        native_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(n_kv_heads=2)).eval()
    hf = to_hf_model(model, tokenizer).eval()
    generator = Generator(model, tokenizer)
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, stop_at_eos=False)
    requests = [generator.new_request(generator.encode_prompt(p), params, seed=i) for i, p in enumerate(PROMPTS)]
    batch = DecodeBatch(model, generator.eos_id, slots=3, decode="auto" if native else "eager")
    assert batch.compile_state == ("native" if native else "eager")
    batch.admit(requests)
    captured = {}

    def spy(original, logits_of):
        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            captured["logits"] = logits_of(out).clone()
            return out
        return call

    if native:  # the step samples in the same call; its logits stay in the step's buffer
        step = batch.decoder.native
        step.decode = spy(step.decode, lambda steps: step._logits[:len(steps[0])])
    else:
        model.forward = spy(model.forward, lambda out: out[:, -1])
    with torch.inference_mode():
        for _ in range(6):
            contexts = [r.window_ids + r.generated for r in batch.requests]
            batch.step()
            for row, context in enumerate(contexts):
                reference = hf(torch.tensor([context])).logits[0, -1]
                torch.testing.assert_close(captured["logits"][row], reference, atol=1e-4, rtol=1e-4)
    assert len({len(r.window_ids) for r in requests}) == 3  # the rows really had different lengths


def test_prefix_cache_restores_a_seen_prompt_without_prefill_and_changes_nothing(generator):
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.3, max_new_tokens=12, stop_at_eos=False)
    batch = DecodeBatch(generator.model, generator.eos_id, slots=3, prefix_cache_bytes=2**20)
    first = generator.new_request(generator.encode_prompt(PROMPTS[0]), params, seed=1)
    batch.admit([first])
    while batch.requests:
        batch.step()
    prefilled = []
    original = batch._prefill
    batch._prefill = lambda start, windows, **k: prefilled.append(len(windows)) or original(start, windows, **k)
    again = [generator.new_request(generator.encode_prompt(p), params, seed=s) for s, p in ((2, PROMPTS[0]), (3, PROMPTS[1]))]
    batch.admit(again)
    batch._prefill = original
    assert prefilled == [1]  # only the unseen prompt was prefilled; the seen one came from the cache
    while batch.requests:
        batch.step()
    assert first.generated == alone(generator, PROMPTS[0], params, 1)
    assert [r.generated for r in again] == [alone(generator, PROMPTS[0], params, 2), alone(generator, PROMPTS[1], params, 3)]


def test_prefix_cache_stays_within_its_byte_budget(generator):
    params = SamplingParams(temperature=0.0, max_new_tokens=1, stop_at_eos=False)
    one_entry = DecodeBatch(generator.model, generator.eos_id, slots=1, prefix_cache_bytes=2**20)
    one_entry.admit([generator.new_request(generator.encode_prompt(PROMPTS[2]), params, seed=0)])
    budget = 8 * one_entry.prefix_cache.used_bytes  # room for a few entries (each at most a quarter)
    batch = DecodeBatch(generator.model, generator.eos_id, slots=1, prefix_cache_bytes=budget)
    for i in range(12):
        batch.admit([generator.new_request(generator.encode_prompt(f"{PROMPTS[2]} {i}"), params, seed=i)])
        assert batch.prefix_cache.used_bytes <= budget
    assert 1 <= len(batch.prefix_cache.entries) < 12
    assert (tuple([generator.eos_id] + generator.encode_prompt(f"{PROMPTS[2]} 11")) in batch.prefix_cache)  # newest kept


def test_a_burst_is_admitted_before_any_decode_step(generator, monkeypatch):
    """While requests keep arriving, every newcomer gets its first token before anyone's second."""
    from src.server import decode_loop
    from src.server.decode_loop import DecodeLoop, Finished, run_decode_loop

    # The policy, not the clock: on a loaded machine a prefill alone can outlast the real window.
    monkeypatch.setattr(decode_loop, "BURST_WINDOW_S", 60.0)

    params = SamplingParams(temperature=0.0, max_new_tokens=5, stop_at_eos=False)
    loop = DecodeLoop(generator.model, generator.eos_id, slots=4)
    arrivals = [generator.new_request(generator.encode_prompt(p), params, seed=0) for p in PROMPTS * 2]
    emitted = []

    def receive(timeout):  # one request per call while the burst lasts, then run to the end
        if arrivals:
            loop.add(6 - len(arrivals), arrivals.pop(0))
        return not (loop.idle and not arrivals)

    run_decode_loop(loop, receive, emitted.extend)
    tokens_per_key = {}
    order = []
    for key, item in emitted:
        if not isinstance(item, Finished):
            tokens_per_key[key] = tokens_per_key.get(key, 0) + 1
            order.append(tokens_per_key[key])
    assert len(tokens_per_key) == 6 and set(tokens_per_key.values()) == {5}
    # the first four fill the slots and all get their first token before any second token
    assert order[:4] == [1, 1, 1, 1]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40, stop_at_eos=False),
    SamplingParams(temperature=1.0, top_k=20, top_p=0.9, repetition_penalty=1.3, max_new_tokens=40, stop_at_eos=False),
])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a step that fell back to eager would prove nothing
def test_compiled_single_row_decode_equals_eager(tokenizer, params):
    """The compiled step (fixed shapes, position as a tensor, masked full-capacity attention) gives
    the eager engine's tokens exactly in float32, through a context slide (40 tokens, context 32)."""
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    eager, compiled = Generator(model, tokenizer, decode="eager"), Generator(model, tokenizer, decode="compiled")
    for seed, prompt in enumerate(PROMPTS[:2]):
        expected = eager.generate(prompt, params.replace(seed=seed)).token_ids
        assert compiled.generate(prompt, params.replace(seed=seed)).token_ids == expected


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_compiled_batch_decode_equals_eager_as_rows_join_and_leave(tokenizer):
    """The server's case: the step compiles in the background while a lone row decodes eagerly,
    then eager steps as the batch grows to 3 and shrinks as stories end, then the compiled step
    for the last row (rows at different positions, different settings): the eager batch's
    tokens exactly, in float32."""
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    generator = Generator(model, tokenizer)
    settings = [
        SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, stop_at_eos=False),
        SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=20, stop_at_eos=False),
        SamplingParams(temperature=0.8, repetition_penalty=1.3, max_new_tokens=40, stop_at_eos=False),
    ]
    outcomes = []
    for decode in ("eager", "compiled"):
        batch = DecodeBatch(model, generator.eos_id, slots=4, decode=decode)
        compiling = batch.compile_in_background()
        requests = [generator.new_request(generator.encode_prompt(prompt), params, seed=i)
                    for i, (prompt, params) in enumerate(zip(PROMPTS, settings))]
        batch.admit(requests[:1])
        for _ in range(3):
            batch.step()
        if compiling is not None:
            compiling.join()
            assert batch.compile_state == "ready"
        batch.admit(requests[1:])
        while batch.requests:
            batch.step()
        outcomes.append([(r.generated, r.finish_reason) for r in requests])
    assert outcomes[0] == outcomes[1]
    assert [len(generated) for generated, _ in outcomes[0]] == [12, 20, 40]


def test_compiled_step_logits_match_eager_with_int8_weights():
    """The compiled fixed-shape step (attention over the whole capacity, masked) against the
    eager step over the written positions, int8 weights, teacher-forced over 6 positions."""
    from src.model.quantize import quantize_int8

    torch.manual_seed(0)
    model = quantize_int8(WikiMiniModel(tiny_model_config(max_seq_len=32)).eval())
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    prompt = torch.randint(0, 384, (1, 9))
    caches = [model.new_kv_cache(dtype=torch.float32) for _ in range(2)]
    position = torch.zeros(1, 1, dtype=torch.long)
    with torch.inference_mode():
        for cache in caches:
            model(prompt, kv_cache=cache, input_pos=torch.arange(9)[None])
        for step in range(6):
            ids = torch.tensor([[7 + step]])
            position.fill_(9 + step)
            eager = model(ids, kv_cache=caches[0], input_pos=position)[:, -1].float()
            fixed = compiled(ids, kv_cache=caches[1], input_pos=position, key_span=32)[:, -1].float()
            assert (eager - fixed).abs().max() <= 0.02 * eager.abs().max()  # bf16 activations, fused in another order


def test_prefix_cache_full_of_entries_restores_one_while_storing_another(generator):
    """A cached window and a new one in the same admission: storing the new one may evict the
    oldest entry, which must not be the one this admission restores."""
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=3, stop_at_eos=False)
    prompts = [[40, 41, 42, 50 + i] for i in range(5)]  # equal lengths: equal entry sizes
    probe = DecodeBatch(generator.model, generator.eos_id, slots=1, prefix_cache_bytes=2**20)
    probe.admit([generator.new_request(prompts[0], params, seed=0)])
    batch = DecodeBatch(generator.model, generator.eos_id, slots=3, prefix_cache_bytes=4 * probe.prefix_cache.used_bytes)
    for prompt in prompts[:4]:  # fill the cache; prompts[0] is now the least recently used
        batch.admit([generator.new_request(prompt, params, seed=0)])
        while batch.requests:
            batch.step()
    assert len(batch.prefix_cache.entries) == 4
    requests = [generator.new_request(p, params, seed=0) for p in (prompts[0], prompts[4])]
    batch.admit(requests)
    while batch.requests:
        batch.step()
    assert [r.generated for r in requests] == [list(generator.decode(generator.new_request(p, params, 0))) for p in (prompts[0], prompts[4])]


def test_a_decode_step_that_cannot_compile_falls_back_to_eager_with_a_warning(generator, monkeypatch):
    def cannot_compile(*args, **kwargs):
        raise torch._dynamo.exc.BackendCompilerFailed(cannot_compile, RuntimeError("C++ compiler not found"), None)

    monkeypatch.setattr(torch, "compile", lambda function, **options: cannot_compile)
    compiled = Generator(generator.model, generator.tokenizer, decode="compiled")
    params = SamplingParams(temperature=0.8, max_new_tokens=12, stop_at_eos=False, seed=3)
    with pytest.warns(RuntimeWarning, match="decoding eagerly: BackendCompilerFailed: .*C\\+\\+ compiler not found"):
        fallback = compiled.generate(PROMPTS[0], params)
    assert fallback.token_ids == generator.generate(PROMPTS[0], params).token_ids


def test_a_compiled_step_that_fails_at_run_time_is_not_hidden(generator, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(torch, "compile", lambda function, **options: out_of_memory)
    compiled = Generator(generator.model, generator.tokenizer, decode="compiled")
    with pytest.raises(RuntimeError, match="out of memory"):
        compiled.generate(PROMPTS[0], SamplingParams(max_new_tokens=5, stop_at_eos=False, seed=0))


def test_eos_ends_a_story_without_being_emitted(generator):
    """Greedy decoding with EOS set to the token greedy picks at step k: the story ends there,
    finish reason "eos", and the EOS is neither emitted nor generated (k = 0: at admission)."""
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=10, stop_at_eos=True)
    prompt = generator.encode_prompt(PROMPTS[1])
    free = list(generator.decode(generator.new_request(prompt, params.replace(stop_at_eos=False), 0)))
    for k in (0, 3):
        eos = free[k]
        if eos in free[:k]:
            continue  # the story would have ended at an earlier occurrence
        batch = DecodeBatch(generator.model, eos, slots=2)
        request = generator.new_request(prompt, params, seed=0)
        emitted = batch.admit([request])
        while batch.requests:
            emitted += batch.step()
        assert [token for _, token in emitted] == request.generated == free[:k]
        assert request.finish_reason == "eos" and not batch.requests


def native_or_skip():
    native_library_or_skip()


@pytest.mark.parametrize("config", [{}, {"n_kv_heads": 2}, {"qk_norm": True}, {"tie_embeddings": False}])
def test_native_greedy_decode_equals_eager_in_float32(tokenizer, config):
    """One row, greedy, float32: the native step gives the eager step's tokens, through a context
    slide (40 tokens, context 32), for each layout it takes."""
    native_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32, **config)).eval()
    eager, fast = Generator(model, tokenizer, decode="eager"), Generator(model, tokenizer)
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40, stop_at_eos=False)
    for prompt in PROMPTS[:2]:
        assert fast.generate(prompt, params).token_ids == eager.generate(prompt, params).token_ids


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_native_batch_decode_equals_eager_as_rows_join_and_leave(tokenizer):
    """Rows at different positions join, slide and leave (rows moved in the cache): the native
    batch gives the eager batch's tokens, sampled with each row's own settings, in float32."""
    native_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    eager, fast = Generator(model, tokenizer, decode="eager"), Generator(model, tokenizer)
    settings = [
        SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12, stop_at_eos=False),
        SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=20, stop_at_eos=False),
        SamplingParams(temperature=0.0, repetition_penalty=1.3, max_new_tokens=40, stop_at_eos=False),
        SamplingParams(temperature=0.8, top_k=5, max_new_tokens=30, stop_at_eos=False),
    ]
    outcomes = []
    for generator in (eager, fast):
        batch = DecodeBatch(model, generator.eos_id, slots=4, decode=generator.decode_step)
        assert batch.compile_state == ("eager" if generator.decode_step == "eager" else "native")
        requests = [generator.new_request(generator.encode_prompt(prompt), params, seed=i)
                    for i, (prompt, params) in enumerate(zip(PROMPTS + ["A big dog"], settings))]
        batch.admit(requests[:2])
        for step in range(45):
            if step == 3:
                batch.admit(requests[2:3])
            if step == 15:
                batch.admit(requests[3:])
            batch.step()
        outcomes.append([(r.generated, r.finish_reason) for r in requests])
    assert outcomes[0] == outcomes[1]
    assert [len(generated) for generated, _ in outcomes[0]] == [12, 20, 40, 30]


def test_native_step_with_int8_weights_stays_close_to_float32(tokenizer):
    """int8 weights and 8-bit activations: the logits stay within a few percent of float32's."""
    import copy

    from src.generation.native import native_step
    from src.model.quantize import quantize_int8

    native_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    int8 = quantize_int8(copy.deepcopy(model), torch.float32)
    prompt = torch.randint(0, 384, (2, 9))
    caches = [model.new_kv_cache(rows=2, dtype=torch.float32) for _ in range(2)]
    step = native_step(int8, caches[1])
    with torch.inference_mode():
        model(prompt, kv_cache=caches[0], input_pos=torch.arange(9)[None])
        int8(prompt, kv_cache=caches[1], input_pos=torch.arange(9)[None])
        for position in range(9, 15):
            ids = torch.tensor([7 + position, 100 + position])
            exact = model(ids[:, None], kv_cache=caches[0], input_pos=torch.full((2, 1), position))[:, -1]
            fast = step(ids.tolist(), [position, position])
            assert (fast - exact).abs().max() <= 0.05 * exact.abs().max()


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_without_a_working_compiler_decoding_is_eager_with_one_warning(generator, monkeypatch, tmp_path, compiler):
    from src.generation import native

    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native.native_step, "warned", False, raising=False)
    cxx = tmp_path / "c++"
    if compiler == "failing":  # it answers --version, then fails every build
        cxx.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'c++ 1.0' && exit 0\necho 'error: broken' >&2; exit 1\n")
        cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    params = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=8, stop_at_eos=False)
    with pytest.warns(RuntimeWarning, match="native decode step is unavailable, decoding eagerly"):
        tokens = generator.generate(PROMPTS[0], params).token_ids
    assert tokens == Generator(generator.model, generator.tokenizer, decode="eager").generate(PROMPTS[0], params).token_ids


def test_native_weights_are_packed_once_per_model_and_read_live_in_float32(tokenizer):
    """Each DecodeBatch over a model shares one packing; float32 weights are not copied, so a
    model trained further (as the trainer's sample stories are) decodes with its new values."""
    from src.generation.native import packed_weights

    native_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    batches = [DecodeBatch(model, None, slots=1) for _ in range(2)]
    assert batches[0].decoder.native._keep[0] is batches[1].decoder.native._keep[0] is packed_weights(model)
    with torch.no_grad():
        model.layers[1].feed_forward.down_proj.weight.mul_(3.0)
    cache = model.new_kv_cache(dtype=torch.float32)
    with torch.inference_mode():
        model(torch.tensor([[5, 6, 7]]), kv_cache=cache, input_pos=torch.arange(3)[None])
        expected = model(torch.tensor([[8]]), kv_cache=cache, input_pos=torch.tensor([[3]]))[:, -1]
        native = batches[0].decoder.native.prefill([5, 6, 7, 8], row=0)
    torch.testing.assert_close(native, expected[0], atol=1e-4, rtol=1e-4)


def test_several_native_steps_per_call_equal_one_step_per_call(tokenizer):
    """`step(k)` runs up to k steps in one native call: the same tokens and finish reasons as k
    calls of one step, with a row ending on EOS mid-call, rows at their budgets and a context
    slide (40 tokens, context 32)."""
    native_or_skip()
    torch.manual_seed(0)
    model = WikiMiniModel(tiny_model_config(max_seq_len=32)).eval()
    generator = Generator(model, tokenizer)
    settings = [SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=40),
                SamplingParams(temperature=1.0, top_k=20, top_p=0.9, max_new_tokens=23, stop_at_eos=False),
                SamplingParams(temperature=0.8, max_new_tokens=40, stop_at_eos=False)]
    probe = generator.new_request(generator.encode_prompt(PROMPTS[0]), settings[0].replace(stop_at_eos=False), 0)
    eos_id = list(generator.decode(probe))[9]  # the greedy row's tenth token will end its story

    def run(steps: int) -> list:
        batch = DecodeBatch(model, eos_id, slots=3)
        requests = [generator.new_request(generator.encode_prompt(p), params, seed=i)
                    for i, (p, params) in enumerate(zip(PROMPTS, settings))]
        batch.admit(requests)
        calls = 0
        while batch.requests:
            batch.step(steps)
            calls += 1
        return [(r.generated, r.finish_reason) for r in requests], calls

    (single, single_calls), (several, several_calls) = run(1), run(7)
    assert several == single
    assert [reason for _, reason in single] == ["eos", "length", "length"] and len(single[0][0]) < 9
    assert several_calls < single_calls / 3


def test_prompt_tokens_mark_the_penalty_memory_of_their_own_rows_only(tiny_model):
    """The repetition penalty's memory of a new row is its prompt, nothing else: rows that join
    beside others, and a row reused after another request left it."""
    from src.generation.batch import DecodeBatch, Request
    from src.generation.presets import SamplingParams

    batch = DecodeBatch(tiny_model, eos_id=None, slots=3)
    params = SamplingParams(temperature=0.0, max_new_tokens=1, stop_at_eos=False)
    first, second = Request([1, 5, 6], [5, 6], params, 0), Request([1, 7], [7], params, 0)
    batch._mark_prompt_tokens([first, second], 0)
    assert batch.seen[0].nonzero().flatten().tolist() == [5, 6]
    assert batch.seen[1].nonzero().flatten().tolist() == [7]
    batch._mark_prompt_tokens([Request([1, 9], [], params, 0)], 0)  # row 0 reused, no prompt tokens
    assert not batch.seen[0].any() and batch.seen[1].nonzero().flatten().tolist() == [7]
