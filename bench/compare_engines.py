#!/usr/bin/env python3
"""One model, three engines: our engine, transformers and llama.cpp, on the same weights.

For each model (the bundled demo model, and llama2.c's stories260K imported from
../shared/models/stories260K where present) this measures, in fp32:

    max |logit difference| from our engine, over every position of a fixed story (read after the
        model's story start token: <|endoftext|> for ours, BOS for llama2.c's)
    greedy agreement: how many of --new-tokens greedy tokens after "Once upon a time" equal ours
        before the first difference (no EOS stop, no repetition penalty)

transformers runs `LlamaForCausalLM` (`Qwen3ForCausalLM` with QK-norm; eager attention) loaded from our HF export
(`convert_hf.py export`); llama.cpp runs our GGUF export (`convert_hf.py gguf --dtype f32`)
through llama-cpp-python with its KV cache in f32 (its default f16 cache alone moves logits by
~1e-3), and is reported as not measured where `llama_cpp` is not importable. Prints a Markdown
table (and JSON with --json).

    python -m bench.compare_engines
    python -m bench.compare_engines --new-tokens 200 --json engines.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

from src.generation import Generator, SamplingParams
from src.model.checkpoint import DEMO_CHECKPOINT, load_model

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
         "One day, she saw a big, red ball.")
PROMPT = "Once upon a time"
STORIES260K = REPO_ROOT.parent / "shared" / "models" / "stories260K"


def greedy_params(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=n,
                          stop_at_eos=False)


def agreement(theirs: list[int], ours: list[int]) -> int:
    same = 0
    for a, b in zip(theirs, ours):
        if a != b:
            break
        same += 1
    return same


@torch.inference_mode()
def transformers_row(checkpoint: Path, story: list[int], prompt: list[int], ours_logits, ours_greedy, work: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from src.model.hf_convert import export_checkpoint

    hf_dir = export_checkpoint(checkpoint, work / "hf")
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager", dtype=torch.float32).eval()
    diff = float((model(torch.tensor([story])).logits[0] - ours_logits).abs().max())
    ids = list(prompt)  # the whole context again for every token: no cache API to differ between versions
    for _ in range(len(ours_greedy)):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return diff, agreement(ids[len(prompt):], ours_greedy)


def llama_cpp_row(checkpoint: Path, story: list[int], prompt: list[int], ours_logits, ours_greedy, work: Path,
                  n_ctx: int, threads: int):
    import llama_cpp

    from src.model.gguf_export import export_gguf

    path = export_gguf(checkpoint, work / "model.gguf", "f32")
    f32 = getattr(llama_cpp, "GGML_TYPE_F32", 0)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False, seed=0,
                          type_k=f32, type_v=f32, n_threads=threads)
    llm.reset()
    llm.eval(story)
    diff = float(np.abs(np.asarray(llm.scores[: len(story)], dtype=np.float32) - ours_logits.numpy()).max())
    llm.reset()
    llm.eval(prompt)
    greedy = []
    for _ in range(len(ours_greedy)):
        greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([greedy[-1]])
    return diff, agreement(greedy, ours_greedy)


def compare(name: str, checkpoint: Path, new_tokens: int, threads: int) -> list[dict]:
    loaded = load_model(checkpoint, precision="fp32")
    generator = Generator.from_loaded(loaded)
    story = (generator.story_prefix + generator.encode_prompt(STORY))[: loaded.config.max_seq_len]
    prompt = generator.story_prefix + generator.encode_prompt(PROMPT)
    with torch.inference_mode():
        ours_logits = loaded.model(torch.tensor([story]))[0]
    ours_greedy = generator.generate(PROMPT, greedy_params(new_tokens)).token_ids
    rows = [{"model": name, "engine": "ours (fp32)", "max_logit_diff": 0.0, "greedy_same": new_tokens,
             "new_tokens": new_tokens, "story_tokens": len(story), "note": ""}]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for engine, run in (("transformers", transformers_row), ("llama.cpp", llama_cpp_row)):
            row = {"model": name, "engine": engine, "max_logit_diff": None, "greedy_same": None,
                   "new_tokens": new_tokens, "story_tokens": len(story), "note": ""}
            try:
                extra = (loaded.config.max_seq_len, threads) if engine == "llama.cpp" else ()
                row["max_logit_diff"], row["greedy_same"] = run(checkpoint, story, prompt, ours_logits, ours_greedy,
                                                                work, *extra)
            except ImportError as exc:
                row["note"] = f"not measured: {exc.name or exc} is not installed"
            rows.append(row)
    return rows


def models(args) -> list[tuple[str, Path | None, str]]:
    """(name, checkpoint or None for stories260K, why it is skipped or '')."""
    absent = "" if (STORIES260K / "stories260K.bin").exists() else f"skipped: {STORIES260K} is absent"
    return [(Path(args.checkpoint).name, Path(args.checkpoint), ""), ("stories260K (llama2.c)", None, absent)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT), help="our model (default: the demo model)")
    parser.add_argument("--new-tokens", type=int, default=100, help="greedy tokens compared (default 100)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and llama.cpp (default 2)")
    parser.add_argument("--json", metavar="OUT", help="also write the rows as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, checkpoint, skipped in models(args):
            if skipped:
                rows.append({"model": name, "engine": "-", "note": skipped})
                continue
            if checkpoint is None:  # stories260K: import it first, as a user would
                from src.model.llama2c import import_llama2c

                checkpoint = import_llama2c(STORIES260K / "stories260K.bin", STORIES260K / "tok512.model",
                                            Path(tmp) / "stories260K.pth")
            rows += compare(name, checkpoint, args.new_tokens, args.threads)

    print("| model | engine | max abs logit diff vs ours (fp32) | greedy tokens equal to ours |")
    print("|---|---|---|---|")
    for row in rows:
        if row.get("note") and row.get("max_logit_diff") is None:
            print(f"| {row['model']} | {row['engine']} | {row['note']} | |")
            continue
        diff = "(reference)" if row["engine"].startswith("ours") else f"{row['max_logit_diff']:.1e}"
        print(f"| {row['model']} | {row['engine']} | {diff} | {row['greedy_same']}/{row['new_tokens']} |")
    story_tokens = {row["model"]: row.get("story_tokens") for row in rows if row.get("story_tokens")}
    print(f"\nlogits over the fixed story ({', '.join(f'{m}: {n} tokens' for m, n in story_tokens.items())}); "
          f"greedy from {PROMPT!r}; torch {torch.__version__}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
