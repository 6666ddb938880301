"""The judge on a bad day: a stand-in endpoint that fails in every way a real one does (the run
finishes and counts them), a dead endpoint (exit 2 before anything is generated), keys that go
only where they belong, and calibration on a stand-in that grades by a rule."""

from __future__ import annotations

import collections
import json
import random
import statistics
import subprocess
import sys
from dataclasses import replace

import pytest

from src.evaluation import judge as judge_module
from src.evaluation import EvaluationError
from src.evaluation.judge import (GRADES, Judge, JudgeFailure, JudgeOptions, calibration, calibration_lines,
                                  judge_api_key, prepare_judge, shuffled_words)
from tests.conftest import REPO_ROOT, TINY_STORIES, Endpoint, completion

GOOD = "Grammar: 8/10\nCreativity: 6/10\nConsistency: 9/10\nPlot: 7/10\nAge group: C (6-7)"


def graded_reply(body: dict) -> dict:
    return completion(GOOD if len(body["messages"]) > 1 else "A fine completion.")


# Each failure (its name: the reason it is counted under, the answer), for the conversation whose
# beginning names it; every other one is answered well.
FAILURES = {
    "http_400": ("http_400", lambda: (400, {"error": {"message": "request exceeds the available context size"}}, 0)),
    "http_500": ("http_500", lambda: (500, {"error": {"message": "boom"}}, 0)),
    "timeout": ("timeout", lambda: (200, completion(GOOD), 1.5)),
    "html": ("not_json", lambda: (200, b"<html>proxy error</html>", 0)),
    "json_labelled_text": ("not_json", lambda: (200, b"upstream error", 0, "application/json")),
    "empty_body": ("not_json", lambda: (200, b"", 0, "application/json")),
    "no_choices": ("no_choices", lambda: (200, {**completion(GOOD), "choices": []}, 0)),
    "choice_without_message": ("not_a_completion", lambda: (200, {**completion(GOOD), "choices": [1]}, 0)),
    "content_not_text": ("not_a_completion", lambda: (200, {**completion(GOOD), "choices": [{"message": {"content": 5}}]},
                                                      0)),
    "too_long": ("too_long", lambda: (200, completion("word " * 20000), 0)),
}


def failing(body: dict, n: int):
    beginning = body["messages"][0]["content"]
    for name, (_, answer) in FAILURES.items():
        if f"story {name} and" in beginning:
            return answer()
    return 200, graded_reply(body), 0


def test_every_kind_of_bad_reply_is_retried_then_counted_and_the_run_finishes(tmp_path):
    beginnings = [f"Once there was a story {name} and a" for name in FAILURES] + ["Tom saw a big", "Lily had a"]
    with Endpoint(failing) as endpoint:
        judge = Judge(endpoint.url, "j", cache_dir=tmp_path, concurrency=4, timeout=0.5, max_tokens=64, backoff_s=0)
        result = judge.grade(beginnings, [" dog."] * len(beginnings), progress=False)
        per_beginning = {name: sum(f"story {name} and" in r["messages"][0]["content"] for r in endpoint.requests)
                         for name in FAILURES}
    summary = result.to_dict()
    assert summary["errors"] == dict(collections.Counter(reason for reason, _ in FAILURES.values()))
    assert summary["n"] == 2 and summary["grammar"] == 8.0
    assert summary["n"] + summary["parse_failures"] + sum(summary["errors"].values()) == len(beginnings)
    assert all(count == judge_module.ATTEMPTS for count in per_beginning.values())  # retried, then counted
    assert all(r["max_tokens"] == 64 for r in endpoint.requests)  # every reply bounded


def test_a_long_first_turn_is_cut_before_it_goes_back_with_the_second(tmp_path):
    rambling = "The student did well. " * 40  # within the reply bound, over what the second turn carries

    def respond(body, n):
        return 200, completion(GOOD if len(body["messages"]) > 1 else rambling), 0

    with Endpoint(respond) as endpoint:
        Judge(endpoint.url, "j", cache_dir=tmp_path, max_tokens=100).grade(["Tom saw a big"], [" dog."],
                                                                          progress=False)
    sent_back = next(r for r in endpoint.requests if len(r["messages"]) == 3)["messages"][1]["content"]
    assert len(sent_back) <= 100 * judge_module.CHARS_PER_TOKEN < len(rambling) and sent_back.endswith(".")
    assert rambling.startswith(sent_back)


def run(args, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=env)


def test_a_run_against_a_failing_judge_finishes_and_reports_the_errors(tmp_path, tiny_checkpoint):
    """The evaluator end to end: HTTP 400s (a judge whose context is too small) and a reply that
    is not JSON are counted in the text and JSON reports; the run exits 0."""
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(s + " " + s + "\n<|endoftext|>\n" for s in TINY_STORIES))

    def respond(body, n):  # one request at a time: the pre-flight, then story 1's three tries, story 2's...
        if 2 <= n <= 1 + judge_module.ATTEMPTS:
            return 400, {"error": {"message": "exceeds the available context size"}}, 0
        if 2 + judge_module.ATTEMPTS <= n <= 1 + 2 * judge_module.ATTEMPTS:
            return 200, b"not json", 0
        return 200, graded_reply(body), 0

    with Endpoint(respond) as endpoint:
        proc = run(["evaluate_model.py", "--checkpoint", str(tiny_checkpoint), "--data", str(stories),
                    "--num-samples", "1", "--max-tokens", "8", "--json", str(tmp_path / "eval.json"),
                    "--judge-url", endpoint.url, "--judge-model", "stand-in", "--judge-prompts", "3",
                    "--judge-concurrency", "1", "--judge-cache-dir", str(tmp_path / "cache")])
    assert proc.returncode == 0, proc.stderr
    judged = json.loads((tmp_path / "eval.json").read_text())["judge"]
    assert judged["n"] + judged["parse_failures"] + sum(judged["errors"].values()) == 3
    assert judged["errors"] == {"http_400": 1, "not_json": 1} and judged["n"] == 1
    assert "errors: http_400 1, not_json 1" in proc.stdout and "Traceback" not in proc.stderr
    assert "2 of 3 unanswered: a re-run asks the judge only for those" in proc.stdout


def test_a_dead_judge_ends_the_run_with_exit_2_before_anything_is_generated(tmp_path, tiny_checkpoint):
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(s + " " + s + "\n<|endoftext|>\n" for s in TINY_STORIES))
    with Endpoint(failing) as endpoint:
        dead = endpoint.url  # closed when the block ends
    flags = ["--checkpoint", str(tiny_checkpoint), "--data", str(stories), "--judge-url", dead, "--judge-model", "x",
             "--judge-prompts", "2", "--judge-cache-dir", str(tmp_path / "cache")]
    for script, out in (("evaluate_model.py", []), ("evaluate_model_enhanced.py", ["--out-dir", str(tmp_path / "out")])):
        proc = run([script, *flags, *out])
        assert proc.returncode == 2, proc.stderr
        assert "cannot be reached" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert "Model:" not in proc.stdout  # nothing was loaded, let alone generated


def test_a_cache_that_cannot_be_written_or_no_openai_client_is_one_error_before_any_request(tmp_path, monkeypatch):
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(s + " " + s + "\n<|endoftext|>\n" for s in TINY_STORIES))
    (tmp_path / "a_file").write_text("")
    with Endpoint(failing) as endpoint:
        options = JudgeOptions(endpoint.url, "j", prompts=2, cache_dir=str(tmp_path / "a_file" / "cache"))
        with pytest.raises(EvaluationError, match="--judge-cache-dir .* cannot write there"):
            prepare_judge(options, str(stories), None, seed=0)
        monkeypatch.setitem(sys.modules, "openai", None)  # import openai fails
        with pytest.raises(EvaluationError, match="pip install openai"):
            prepare_judge(replace(options, cache_dir=str(tmp_path / "cache")), str(stories), None, seed=0)
    assert endpoint.requests == []


def test_a_refused_key_or_an_unknown_model_is_found_by_the_first_cheap_request(tmp_path):
    for status, message in ((401, "refused the key"), (404, "has no model")):
        with Endpoint(lambda body, n, status=status: (status, {"error": {"message": "no"}}, 0)) as endpoint:
            with pytest.raises(JudgeFailure, match=message):
                Judge(endpoint.url, "j", cache_dir=tmp_path).check_endpoint()
            assert len(endpoint.requests) == 1 and endpoint.requests[0]["max_tokens"] == 1


def test_an_openai_key_goes_to_openai_only(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-users-openai-key")
    openai_account = {"OPENAI_ORG_ID": "org-users-org", "OPENAI_PROJECT_ID": "proj-users-project",
                      "OPENAI_ADMIN_KEY": "sk-admin-users-key"}
    for name, value in openai_account.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("JUDGE_API_KEY", raising=False)
    assert judge_api_key("https://api.openai.com/v1") == ("sk-users-openai-key", "OPENAI_API_KEY")
    assert judge_api_key("http://127.0.0.1:8080/v1") == (None, "no key")
    with Endpoint(lambda body, n: (200, graded_reply(body), 0)) as endpoint:
        Judge(endpoint.url, "j", cache_dir=tmp_path / "a").grade(["Tom saw a big"], [" dog."], progress=False)
        monkeypatch.setenv("JUDGE_API_KEY", "judge-key-1")
        Judge(endpoint.url, "j", cache_dir=tmp_path / "b").grade(["Tom saw a big"], [" dog."], progress=False)
        monkeypatch.setenv("MY_LOCAL_KEY", "judge-key-2")
        Judge(endpoint.url, "j", cache_dir=tmp_path / "c", api_key_env="MY_LOCAL_KEY").grade(
            ["Tom saw a big"], [" dog."], progress=False)
    sent = [h.get("authorization") for h in endpoint.headers]
    every_header = " ".join(value for headers in endpoint.headers for value in headers.values())
    assert not any(secret in every_header for secret in ("sk-users-openai-key", *openai_account.values()))
    assert sent[:2] == ["Bearer none"] * 2 and sent[2:4] == ["Bearer judge-key-1"] * 2
    assert sent[4:] == ["Bearer judge-key-2"] * 2
    cached = "".join(p.read_text() for p in tmp_path.rglob("*.json"))
    assert cached and not any(key in cached for key in ("sk-users", "judge-key-1", "judge-key-2"))


def bigram_share(text: str, known: set[tuple[str, str]]) -> float:
    words = text.split()
    pairs = list(zip(words, words[1:]))
    return sum(pair in known for pair in pairs) / max(1, len(pairs))


def rule_grader(known: set[tuple[str, str]]):
    """Grades every criterion 1 + 9 x (share of the completion's word pairs found in the true
    stories): the true rest near 10, the same words shuffled far lower."""

    def respond(body, n):
        if len(body["messages"]) == 1:
            return 200, completion("Assessed."), 0
        story_part = body["messages"][0]["content"].split("***")[2].split("\n\nPlease provide")[0]  # the completion
        grade = round(1 + 9 * bigram_share(story_part, known), 1)
        reply = "\n".join(f"{name}: {grade}/10" for name in ("Grammar", "Creativity", "Consistency", "Plot"))
        return 200, completion(reply + "\nAge group: B (4-5)"), 0

    return respond


def test_calibration_means_intervals_and_fitness_follow_the_grades(tmp_path):
    stories = [s + " " + s for s in TINY_STORIES]
    known = {pair for s in stories for pair in zip(s.split(), s.split()[1:])}
    splits = judge_module.story_splits(stories, 4, seed=0)
    beginnings, rests = [b for b, _ in splits], [r for _, r in splits]
    rng = random.Random(0)
    shuffled = [shuffled_words(rest, rng) for rest in rests]
    model = [" the the dog dog ran ran"] * 4
    with Endpoint(rule_grader(known)) as endpoint:
        judge = Judge(endpoint.url, "rule", cache_dir=tmp_path)
        results = {kind: judge.grade(beginnings, texts, progress=False)
                   for kind, texts in (("true", rests), ("model", model), ("shuffled", shuffled))}
    table = calibration(results)
    for kind, texts in (("true", rests), ("model", model), ("shuffled", shuffled)):
        expected = [round(1 + 9 * bigram_share(text, known), 1) for text in texts]
        mean, half = statistics.fmean(expected), 1.96 * statistics.stdev(expected) / 2
        for name in GRADES:
            assert table[kind][name]["mean"] == pytest.approx(mean, abs=1e-3)
            assert table[kind][name]["low"] == pytest.approx(mean - half, abs=1e-3)
            assert table[kind][name]["high"] == pytest.approx(mean + half, abs=1e-3)
        assert table[kind]["n"] == 4
    assert table["true"]["grammar"]["mean"] > 9 and table["fit"] is True
    # a judge that gives everything the same grade cannot tell them apart
    same = {kind: judge_module.JudgeResult("flat", [{**{g: 5.0 for g in GRADES}, "age_group": "B"}] * 4)
            for kind in ("true", "model", "shuffled")}
    assert calibration(same)["fit"] is False
    # one story each is no evidence, however far apart its grades
    one = {kind: judge_module.JudgeResult("one", [{**{g: grade for g in GRADES}, "age_group": "B"}])
           for kind, grade in (("true", 9.0), ("model", 5.0), ("shuffled", 1.0))}
    table = calibration(one)
    assert table["fit"] is False and table["true"]["grammar"] == {"mean": 9.0, "low": None, "high": None}
    assert "too few readable grades" in calibration_lines(table)[-1]


def test_both_evaluators_calibrate_the_judge_and_report_it(tmp_path, tiny_checkpoint):
    stories_text = [s + " " + s for s in TINY_STORIES]
    known = {pair for s in stories_text for pair in zip(s.split(), s.split()[1:])}
    stories = tmp_path / "stories.txt"
    stories.write_text("".join(s + "\n<|endoftext|>\n" for s in stories_text))
    with Endpoint(rule_grader(known)) as endpoint:
        flags = ["--data", str(stories), "--judge-url", endpoint.url, "--judge-model", "rule", "--judge-prompts", "3",
                 "--judge-calibrate", "--judge-cache-dir", str(tmp_path / "cache"), "--num-samples", "1",
                 "--max-tokens", "8"]
        proc = run(["evaluate_model.py", "--checkpoint", str(tiny_checkpoint), "--json", str(tmp_path / "e.json"),
                    *flags])
        assert proc.returncode == 0, proc.stderr
        calibrated = json.loads((tmp_path / "e.json").read_text())["judge"]["calibration"]
        assert set(calibrated) == {"true", "model", "shuffled", "fit"} and calibrated["fit"] is True
        assert calibrated["true"]["plot"]["mean"] > calibrated["shuffled"]["plot"]["mean"]
        assert "fit to compare models: yes" in proc.stdout
        proc = run(["evaluate_model_enhanced.py", "--checkpoint", str(tiny_checkpoint), "--presets", "balanced",
                    "--out-dir", str(tmp_path / "out"), *flags])
        assert proc.returncode == 0, proc.stderr
        presets = json.loads((tmp_path / "out" / "preset_comparison.json").read_text())["presets"]
        assert presets["balanced"]["judge"]["calibration"]["fit"] is True
    proc = run(["evaluate_model.py", "--checkpoint", str(tiny_checkpoint), "--prompts", str(stories),
                "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "x", "--judge-calibrate"])
    assert proc.returncode == 2 and "--judge-calibrate needs --data" in proc.stderr
