"""`generate.py`: stories from a checkpoint on the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from src.device import DEVICE_CHOICES, PRECISION_CHOICES
from src.generation.engine import GenerationResult, Generator
from src.generation.postprocess import postprocess
from src.generation.presets import DEFAULT_PRESET, PRESETS, SamplingParams
from src.model.checkpoint import CheckpointError, load_for_inference

DEFAULT_PROMPT = "Once upon a time"


# Below this many tokens a compile (a few seconds even from inductor's disk cache) costs more
# than it saves (`bench/bench_decode.py` times both).
COMPILE_PAYS_OFF_TOKENS = 2000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate.py",
        description="Generate children's stories with a WikiMiniModel checkpoint.",
        epilog="Checkpoint: --checkpoint, else $CHECKPOINT_PATH, else the best "
        "checkpoint of the newest run under checkpoints/, else the bundled demo model.",
    )
    p.add_argument("--checkpoint", help="path to a .pth checkpoint")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"story opening (default: {DEFAULT_PROMPT!r})")
    p.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET, help="sampling preset")
    p.add_argument("--temperature", type=float, help="0 = greedy; overrides the preset")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, help="0 disables; overrides the preset")
    p.add_argument("--top-p", "--top_p", dest="top_p", type=float, help="1 disables; overrides the preset")
    p.add_argument("--repetition-penalty", "--repetition_penalty", dest="repetition_penalty", type=float)
    p.add_argument("--max-tokens", "--max_tokens", "--max-new-tokens", "--max_new_tokens",
                   dest="max_tokens", type=int, default=200, help="new tokens at most (default 200)")
    p.add_argument("--num-samples", "--num_samples", dest="num_samples", type=int, default=1)
    p.add_argument("--seed", type=int, help="seed for sample 1; sample i uses seed+i-1")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                   help="weights: auto (GPU bf16; CPU int8 weights + bf16 activations), fp32, bf16 or "
                   "int8 (CPU only)")
    p.add_argument("--compile", nargs="?", const="on", default="auto", choices=("auto", "on", "off"),
                   help="torch.compile the PyTorch decode step where the native step cannot run (bf16, "
                   f"GPU, no C++ compiler). auto (default): when a prompt asks for at least "
                   f"{COMPILE_PAYS_OFF_TOKENS:,} tokens (samples x max tokens); a bare --compile means on")
    p.add_argument("--no-postprocess", "--no_postprocess", dest="postprocess", action="store_false",
                   help="print the raw model output (no whitespace/capital/punctuation clean-up)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated (raw text)")
    p.add_argument("--json", action="store_true", help="print one JSON document with every sample")
    p.add_argument("--interactive", action="store_true", help="read prompts from stdin until EOF or 'quit'")
    return p


def wants_compile(mode: str, planned_tokens: int) -> bool:
    """Whether to compile the decode step: asked for, or (auto) a run long enough to repay it."""
    if mode != "auto":
        return mode == "on"
    return planned_tokens >= COMPILE_PAYS_OFF_TOKENS


def require_utf8(text: str, what: str) -> str:
    """Undecodable bytes reach Python as lone surrogates (argv) or a decode error (stdin);
    either way they are not text a tokenizer can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None
    return text


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    return PRESETS[args.preset].overridden_by(args, max_new_tokens=args.max_tokens, seed=args.seed)


def sample_record(result: GenerationResult, final_text: str) -> dict:
    return {
        "prompt": result.prompt,
        "continuation": result.text,
        "text": final_text,
        "tokens": result.tokens,
        "finish_reason": result.finish_reason,
        "tokens_per_s": round(result.tokens_per_s, 2),
        "seed": result.seed,
    }


def run_prompt(generator: Generator, prompt: str, params: SamplingParams, args) -> list[dict]:
    records = []
    for i in range(args.num_samples):
        sample_params = params.replace(seed=None if params.seed is None else params.seed + i)
        if args.stream and not args.json:
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            print(prompt, end="", flush=True)
            stream = generator.stream(prompt, sample_params)
            for delta in stream:
                print(delta, end="", flush=True)
            result = stream.result
            print()
        else:
            result = generator.generate(prompt, sample_params)
        full_text = prompt + result.text
        final_text = postprocess(full_text, cut=result.finish_reason == "length") if args.postprocess else full_text
        records.append(sample_record(result, final_text))
        if not args.stream and not args.json:
            if args.num_samples > 1:
                print(f"--- sample {i + 1} ---")
            print(final_text)
        if not args.json:
            print(f"[{result.tokens} tokens, {result.finish_reason}, {result.tokens_per_s:.1f} tokens/s, "
                  f"seed {result.seed}]", file=sys.stderr)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        parser.error(f"--num-samples must be >= 1, got {args.num_samples}")
    try:
        require_utf8(args.prompt, "--prompt")
    except ValueError as exc:
        parser.error(str(exc))
    try:
        params = sampling_params(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        loaded = load_for_inference(args.checkpoint, args.device, args.precision)
    except CheckpointError as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a device or precision this machine does not have
        parser.error(str(exc))
    decode = "compile" if wants_compile(args.compile, args.num_samples * args.max_tokens) else "auto"
    generator = Generator.from_loaded(loaded, decode=decode)

    if args.interactive:
        print(f"Model {loaded.name} ({loaded.model.num_parameters():,} params). Empty line or 'quit' to exit.")
        while True:
            try:
                prompt = require_utf8(input("prompt> "), "the prompt read from stdin").strip()
            except EOFError:
                break
            except (UnicodeDecodeError, ValueError):
                print("generate.py: error: the prompt read from stdin is not valid UTF-8 text", file=sys.stderr)
                return 2
            if not prompt or prompt.lower() in ("quit", "exit"):
                break
            records = run_prompt(generator, prompt, params, args)
            if args.json:
                print(json.dumps({"samples": records}, ensure_ascii=False))
        return 0

    records = run_prompt(generator, args.prompt, params, args)
    if args.json:
        settings = {k: v for k, v in vars(params).items()}
        document = {"checkpoint": str(loaded.path), "preset": args.preset, "settings": settings, "samples": records}
        print(json.dumps(document, ensure_ascii=False, indent=2))
    return 0
