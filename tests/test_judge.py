"""The TinyStories paper's LLM judge, against a stand-in chat endpoint this test starts: the
conversation's two turns in the paper's wording, grade parsing, retries, the cache, errors, and
both evaluators' --judge flags end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from src.evaluation import EvaluationError
from src.evaluation.judge import FIRST_TURN, GRADE_FORMAT, SECOND_TURN, Judge, cut_mid_sentence, parse_grades
from tests.conftest import REPO_ROOT, TINY_STORIES, Endpoint, completion

ASSESSMENT = "The student completes the split sentence and stays consistent with the beginning."


def StandInJudge(grade_replies: list[str], status: int = 200) -> Endpoint:
    """An endpoint that answers the first turn with ASSESSMENT and the second with the next of
    `grade_replies` (the last one repeats), or every request with `status`."""
    replies = list(grade_replies)

    def respond(body, n):
        if status != 200:
            return status, {"error": {"message": "no", "type": "invalid_api_key"}}, 0
        if len(body["messages"]) == 1:
            return 200, completion(ASSESSMENT), 0
        return 200, completion(replies.pop(0) if len(replies) > 1 else replies[0]), 0

    return Endpoint(respond)


GOOD = "Grammar: 8/10\nCreativity: 6/10\nConsistency: 9/10\nPlot: 7/10\nAge group: C (6-7)"


@pytest.mark.parametrize("reply, expected", [
    (GOOD, {"grammar": 8, "creativity": 6, "consistency": 9, "plot": 7, "age_group": "C"}),
    ("**Grammar** - 7\n**Creativity** - 5\n**Consistency with the beginning** - 8\n**Plot makes sense** - 6\n"
     "**Age group:** B: 4-5", {"grammar": 7, "creativity": 5, "consistency": 8, "plot": 6, "age_group": "B"}),
    ("grammar: 9 out of 10. creativity: 7.5 out of 10. consistency: 10/10. plot: 8/10.\n"
     "My best guess of the age: D", {"grammar": 9, "creativity": 7.5, "consistency": 10, "plot": 8, "age_group": "D"}),
    ("1. Grammar score: 6\n2. Creativity score: 4\n3. Consistency score: 5\n4. Plot score: 3\n"
     "Estimated age group: (A)", {"grammar": 6, "creativity": 4, "consistency": 5, "plot": 3, "age_group": "A"}),
    ("Grammar 8, creativity 6, consistency 9, plot 7. The age group is E.",
     {"grammar": 8, "creativity": 6, "consistency": 9, "plot": 7, "age_group": "E"}),
])
def test_grades_are_read_from_the_usual_formats(reply, expected):
    assert parse_grades(reply) == expected


@pytest.mark.parametrize("reply", ["I cannot grade this.", "Grammar: 8/10\nCreativity: 6/10", "",
                                   "Grammar: 80/10\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge group: C",
                                   "Grammar: 8\nCreativity: 6\nConsistency: 9\nPlot: 7\nAge: A child wrote this"])
def test_nonsense_or_incomplete_replies_are_not_grades(reply):
    assert parse_grades(reply) is None


def test_a_beginning_is_cut_inside_a_sentence():
    rng = random.Random(0)
    for story in TINY_STORIES:
        beginning = cut_mid_sentence(story * 2, rng)
        assert (story * 2).startswith(beginning) and not beginning.endswith((".", "!", "?"))


def test_the_conversation_follows_the_paper_and_replies_are_cached(tmp_path):
    beginnings, completions = ["Tom saw a big", "Lily went to the"], [" dog. It was happy.", " park and played."]
    with StandInJudge([GOOD]) as stand_in:
        judge = Judge(stand_in.url, "judge-1", cache_dir=tmp_path, concurrency=2)
        result = judge.grade(beginnings, completions, progress=False).to_dict()
        asked = len(stand_in.requests)
        again = judge.grade(beginnings, completions, progress=False).to_dict()
        assert len(stand_in.requests) == asked == 4  # two turns per story, then all from the cache
    first = next(r for r in stand_in.requests if len(r["messages"]) == 1 and "Tom saw" in r["messages"][0]["content"])
    assert first["model"] == "judge-1"
    assert first["messages"][0]["content"] == FIRST_TURN.format(beginning="Tom saw a big", completion=" dog. It was happy.")
    assert "Tom saw a big*** dog. It was happy." in first["messages"][0]["content"]
    second = next(r for r in stand_in.requests if len(r["messages"]) == 3 and "Tom saw" in r["messages"][0]["content"])
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == ASSESSMENT and second["messages"][2]["content"] == SECOND_TURN
    assert result == again == {"model": "judge-1", "n": 2, "grammar": 8.0, "creativity": 6.0, "consistency": 9.0,
                               "plot": 7.0, "age_groups": {"A": 0, "B": 0, "C": 2, "D": 0, "E": 0, "F": 0},
                               "parse_failures": 0, "errors": {}}


def test_an_unreadable_reply_is_asked_once_more_with_the_format_spelled_out_then_counted(tmp_path):
    with StandInJudge(["no grades here", "still none", GOOD]) as stand_in:
        result = Judge(stand_in.url, "j", cache_dir=tmp_path, concurrency=1).grade(
            ["Tom saw a big"], [" dog."], progress=False).to_dict()
        grade_turns = [r for r in stand_in.requests if len(r["messages"]) == 3]
    assert len(grade_turns) == 2 and result["n"] == 0 and result["parse_failures"] == 1
    assert grade_turns[0]["messages"][2]["content"] == SECOND_TURN
    assert grade_turns[1]["messages"][2]["content"] == SECOND_TURN + GRADE_FORMAT
    assert grade_turns[1]["messages"][:2] == grade_turns[0]["messages"][:2]
    assert result["grammar"] is None
    assert not list(tmp_path.glob("*.json")) or all("no grades" not in p.read_text() for p in tmp_path.glob("*.json"))
    with StandInJudge(["prose, no grades", GOOD]) as stand_in:  # the spelled-out ask is answered
        result = Judge(stand_in.url, "j", cache_dir=tmp_path / "b", concurrency=1).grade(
            ["Tom saw a big"], [" dog."], progress=False).to_dict()
    assert result["n"] == 1 and result["parse_failures"] == 0 and result["plot"] == 7.0


def test_an_unreachable_judge_or_a_refused_key_is_one_clear_error(tmp_path):
    with StandInJudge([GOOD]) as stand_in:
        closed_url = stand_in.url
    with pytest.raises(EvaluationError, match="cannot be reached"):
        Judge(closed_url, "j", cache_dir=tmp_path).check_endpoint()
    with StandInJudge([GOOD], status=401) as stand_in, pytest.raises(EvaluationError, match="refused the key"):
        Judge(stand_in.url, "j", cache_dir=tmp_path).grade(["Tom saw a big"], [" dog."], progress=False)


def run(args):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_both_evaluators_report_the_judges_grades(tmp_path, tiny_checkpoint):
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(s + " " + s + "\n<|endoftext|>\n" for s in TINY_STORIES))
    with StandInJudge([GOOD]) as stand_in:
        judge_flags = ["--judge-url", stand_in.url, "--judge-model", "stand-in", "--judge-prompts", "3",
                       "--judge-cache-dir", str(tmp_path / "cache")]
        proc = run(["evaluate_model.py", "--checkpoint", str(tiny_checkpoint), "--data", str(stories),
                    "--num-samples", "1", "--max-tokens", "8", "--json", str(tmp_path / "eval.json"), *judge_flags])
        assert proc.returncode == 0, proc.stderr
        assert "Judge stand-in (3 stories, 1-10): grammar 8.00" in proc.stdout
        judged = json.loads((tmp_path / "eval.json").read_text())["judge"]
        assert judged["n"] == 3 and judged["plot"] == 7.0 and judged["age_groups"]["C"] == 3

        proc = run(["evaluate_model_enhanced.py", "--checkpoint", str(tiny_checkpoint), "--data", str(stories),
                    "--num-samples", "1", "--max-tokens", "8", "--presets", "balanced", "creative",
                    "--out-dir", str(tmp_path / "out"), *judge_flags])
        assert proc.returncode == 0, proc.stderr
        presets = json.loads((tmp_path / "out" / "preset_comparison.json").read_text())["presets"]
        assert presets["creative"]["judge"]["consistency"] == 9.0 and presets["balanced"]["judge"]["n"] == 3

    proc = run(["evaluate_model.py", "--checkpoint", str(tiny_checkpoint), "--data", "none",
                "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "x"])
    assert proc.returncode == 2 and "needs story beginnings" in proc.stderr and "Traceback" not in proc.stderr
