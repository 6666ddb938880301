"""lm-evaluation-harness scores the server through its own `local-completions` client: a
loglikelihood_rolling task gives the bits per byte that `evaluate_model.py --per-story` computes,
and a multiple_choice task runs. Skipped where lm_eval is not installed."""

from __future__ import annotations

import json
import textwrap

import pytest

from src.evaluation.heldout import evaluate_stories
from src.model.checkpoint import load_model
from src.server.app import create_app
from src.server.settings import ServerSettings
from tests.conftest import TINY_STORIES
from tests.test_server_live import LiveServer

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm_eval)")


def write_tasks(folder, stories):
    (folder / "stories.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    choices = [{"context": "Once upon a time there was a little", "choices": [" cat", " sky blue the"], "label": 0},
               {"context": "The happy dog ran to the", "choices": [" park.", " was was"], "label": 0}]
    (folder / "choices.jsonl").write_text("".join(json.dumps(c) + "\n" for c in choices))
    (folder / "bpb.yaml").write_text(textwrap.dedent(f"""
        task: tiny_stories_bpb
        dataset_path: json
        dataset_kwargs: {{data_files: {folder / 'stories.jsonl'}}}
        test_split: train
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: "{{{{text}}}}"
        metric_list:
          - metric: bits_per_byte
            aggregation: bits_per_byte
            higher_is_better: false
        """))
    (folder / "mc.yaml").write_text(textwrap.dedent(f"""
        task: tiny_stories_choice
        dataset_path: json
        dataset_kwargs: {{data_files: {folder / 'choices.jsonl'}}}
        test_split: train
        output_type: multiple_choice
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: "{{{{label}}}}"
        target_delimiter: ""
        metric_list:
          - metric: acc
        """))


def test_lm_eval_scores_the_server_like_evaluate_model(tmp_path, tiny_checkpoint):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    stories = TINY_STORIES
    write_tasks(tmp_path, stories)
    (tmp_path / "stories.txt").write_text("".join(s + "\n<|endoftext|>\n" for s in stories))
    loaded = load_model(tiny_checkpoint)
    reference = evaluate_stories(loaded.model, loaded.tokenizer, str(tmp_path / "stories.txt"), loaded.story_start_id)

    with LiveServer(create_app(loaded, ServerSettings(engine="thread"))) as live:
        results = simple_evaluate(
            model="local-completions",
            model_args=f"model=tiny,base_url={live.url}/v1/completions,tokenizer_backend=remote,"
                       f"max_length={loaded.config.max_seq_len + 1},num_concurrent=1,max_retries=1",
            tasks=["tiny_stories_bpb", "tiny_stories_choice"],
            task_manager=TaskManager(include_path=str(tmp_path)),
            log_samples=False,
        )["results"]
    bpb = results["tiny_stories_bpb"]["bits_per_byte,none"]
    assert bpb == pytest.approx(reference.bits_per_byte, rel=0.01)
    assert 0.0 <= results["tiny_stories_choice"]["acc,none"] <= 1.0
