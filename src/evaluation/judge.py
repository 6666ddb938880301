"""The TinyStories paper's evaluation (Eldan & Li 2023, arXiv:2305.07759, "GPT-Eval").

A story beginning is cut mid-sentence, the model completes it, and a strong chat model grades
the completion as a teacher grades a student, in two turns: a general assessment of
`beginning***completion`, then grades for grammar, creativity, consistency with the beginning
and plot (1-10), and a guess of the writer's age group (A: 3 or under ... F: 13-16).

Any OpenAI-compatible chat endpoint can judge (OpenAI, llama.cpp's llama-server, Ollama, vLLM),
through the `openai` client. One cheap request first checks the endpoint, key and model, so a
dead judge ends the run before anything is generated. After that no single reply ends it: an
error (HTTP 4xx/5xx, a timeout, a body that is not a completion, a reply over its size bound) is
retried with backoff, then counted by reason; a reply whose grades cannot be read is asked for
once more, with the grades' format spelled out, then counted as a parse failure. Replies are
cached on disk by judge model and conversation, so a re-run asks only for what is missing. Every
reply is bounded (`max_tokens`), and the first turn's assessment is cut so the second turn still
fits a small judge's context.

A judge is only worth its grades if it can tell stories apart: `calibrate` grades the true rest
of each story, the model's completion and the true rest with its words shuffled, and calls the
judge fit when the true rest beats the shuffled one clearly on every grade. Grades depend on the
judge: compare models only under the same judge.

An OpenAI key (OPENAI_API_KEY, and the OPENAI_ORG_ID / OPENAI_PROJECT_ID the client would add)
is sent only to OpenAI's own API; any other endpoint gets a key only from JUDGE_API_KEY or the
variable `--judge-api-key-env` names. No key is ever logged, cached or reported.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from src.atomic_files import atomic_write_text
from src.evaluation import EvaluationError

# The paper's two turns (its Figure 3), word for word, typos included.
FIRST_TURN = (
    "In the following exercise, the student is given a beginning of a story. The student needs to complete it "
    "into a full story. The exercise tests the student\u2019s language abilities and creativity. The symbol *** "
    "marks the separator between the prescribed beginning and the student\u2019s completion:\n\n"
    "{beginning}***{completion}\n\n"
    "Please provide your general assessment about the part written by the student (the one after the *** "
    "symbol). Is it gramatically correct? Is it consistent with the beginning of the story? Pay special "
    "attention to whether the student manages to complete the sentence which is split in the middle by the "
    "separator ***."
)
SECOND_TURN = (
    "Now, grade the student\u2019s completion in terms of grammar, creativity, consistency with the story\u2019s "
    "beginning and whether the plot makes sense. Moreover, please provide your best guess of what the age of "
    "the student might be, as reflected from the completion. Choose from possible age groups: A: 3 or under. "
    "B: 4-5. C: 6-7. D: 8-9. E: 10-12. F: 13-16."
)
# Added to the second turn when its first reply held no readable grades.
GRADE_FORMAT = ("\n\nAnswer in exactly this format, each grade a number from 1 to 10:\n"
                "Grammar: N/10\nCreativity: N/10\nConsistency: N/10\nPlot: N/10\nAge group: a letter from A to F")
GRADES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = "ABCDEF"
DEFAULT_CACHE_DIR = "data/judge_cache"
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_TOKENS = 400  # per reply; the paper's judge wrote 100-300 tokens a turn
ATTEMPTS = 3  # calls per request before its error is counted
BACKOFF_S = 1.0  # before the first retry, doubled before each next one
CHARS_PER_TOKEN = 4  # about, for English text: what sizes the bounds below
OPENAI_HOST = "api.openai.com"


# ---------------------------------------------------------------------------------------------
# Story beginnings cut mid-sentence


def cut_mid_sentence(story: str, rng: random.Random) -> str | None:
    """The story up to a word boundary inside a sentence, 30-70% of the way through (None if
    the story is too short to cut): the completion has to finish that sentence first."""
    words = story.split()
    if len(words) < 12:
        return None
    candidates = [i for i in range(int(len(words) * 0.3), int(len(words) * 0.7))
                  if not words[i - 1].endswith((".", "!", "?", '"', ":"))]
    if not candidates:
        return None
    return " ".join(words[:rng.choice(candidates)])


def story_splits(stories: Iterable[str], count: int, seed: int) -> list[tuple[str, str]]:
    """`count` (beginning, true rest) pairs cut from the first stories that can be cut (the
    same ones for a seed)."""
    rng = random.Random(seed)
    splits = []
    for story in stories:
        beginning = cut_mid_sentence(story, rng)
        if beginning is not None:
            splits.append((beginning, " " + " ".join(story.split()[len(beginning.split()):])))
            if len(splits) == count:
                break
    if len(splits) < count:
        raise EvaluationError(f"the text holds only {len(splits)} stories long enough to cut; asked for {count}")
    return splits


def shuffled_words(text: str, rng: random.Random) -> str:
    """The same words in a random order: grammar and plot gone, vocabulary kept."""
    words = text.split()
    rng.shuffle(words)
    return " " + " ".join(words)


# ---------------------------------------------------------------------------------------------
# Reading the grades


def _grade(text: str, name: str) -> float | None:
    """The 1-10 grade after `name` ("Grammar: 8/10", "**grammar** - 8", "Grammar score: 8.5")."""
    stem = {"consistency": r"consisten\w*", "plot": r"plot\w*"}.get(name, name)
    match = re.search(rf"\b{stem}\b[^0-9\n]{{0,60}}?(\d+(?:\.\d+)?)(\s*(?:/|out of)\s*10)?", text, re.IGNORECASE)
    if match is None:
        return None
    value = float(match.group(1))
    return value if 1 <= value <= 10 else None


def _age_group(text: str) -> str | None:
    """The age-group letter from the line that names it ("Age group: C", "C (6-7)", "**D**")."""
    for line in re.findall(r"[^\n]*\bage\b[^\n]*(?:\n[^\n]*)?", text, re.IGNORECASE):
        for pattern in (r"\b([A-F])\s*[:)\-\u2013]\s*\(?\d", r"\(([A-F])\)", r"\*\*([A-F])\*\*",
                        r"(?i:group|age)\b(?:\s*(?:is|would be|:|-))*[^A-Za-z\n]*\**([A-F])\**\b(?![a-z'])(?!\s+[a-z])"):
            found = re.search(pattern, line)
            if found:
                return found.group(1)
    return None


def parse_grades(reply: str) -> dict | None:
    """{"grammar": 8.0, ..., "age_group": "C"} from the second turn's reply, or None if any part
    is missing."""
    grades = {name: _grade(reply, name) for name in GRADES}
    age = _age_group(reply)
    if age is None or any(value is None for value in grades.values()):
        return None
    return {**grades, "age_group": age}


# ---------------------------------------------------------------------------------------------
# The judge


class JudgeFailure(EvaluationError):
    """The judge cannot be used at all: unreachable, the key refused, or no such model."""


class BadReply(Exception):
    """One request failed in a way a retry may fix; `reason` is what the report counts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def judge_api_key(url: str, key_env: str | None = None) -> tuple[str | None, str]:
    """(the key for `url`, where it came from). OPENAI_API_KEY goes to OpenAI's own API only;
    elsewhere the key is read from `key_env`, else JUDGE_API_KEY, else there is none."""
    if key_env:
        if not os.environ.get(key_env):
            raise EvaluationError(f"--judge-api-key-env {key_env}: that environment variable is not set")
        return os.environ[key_env], key_env
    if os.environ.get("JUDGE_API_KEY"):
        return os.environ["JUDGE_API_KEY"], "JUDGE_API_KEY"
    if (urlparse(url).hostname or "").lower() == OPENAI_HOST and os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"], "OPENAI_API_KEY"
    return None, "no key"


@dataclass
class JudgeResult:
    model: str
    grades: list[dict] = field(default_factory=list)  # one per parsed conversation
    parse_failures: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)  # reason -> conversations

    @property
    def asked(self) -> int:
        return len(self.grades) + self.parse_failures + sum(self.errors.values())

    def to_dict(self) -> dict:
        summary = {"model": self.model, "n": len(self.grades)}
        for name in GRADES:
            values = [g[name] for g in self.grades]
            summary[name] = round(statistics.fmean(values), 3) if values else None
        summary["age_groups"] = {group: sum(g["age_group"] == group for g in self.grades) for group in AGE_GROUPS}
        summary["parse_failures"] = self.parse_failures
        summary["errors"] = dict(sorted(self.errors.items()))
        return summary


@dataclass(frozen=True)
class Unanswered:
    reason: str  # "parse_failure", or the last error's reason


class Judge:
    """Grades completions through an OpenAI-compatible chat endpoint, with an on-disk cache."""

    def __init__(self, base_url: str, model: str, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                 concurrency: int = 4, timeout: float = DEFAULT_TIMEOUT_S, api_key_env: str | None = None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, backoff_s: float = BACKOFF_S) -> None:
        try:
            import openai
        except ImportError:
            raise EvaluationError("the judge talks through the openai client: pip install openai") from None

        self.model = model
        self.cache_dir = Path(cache_dir)
        self.concurrency = max(1, concurrency)
        self.max_tokens, self.backoff_s = max_tokens, backoff_s
        self._cache_lock = threading.Lock()
        self.max_reply_chars = 4 * CHARS_PER_TOKEN * max_tokens  # a server that ignores max_tokens
        self.assessment_chars = CHARS_PER_TOKEN * max_tokens * 3 // 4  # what the second turn carries back
        key, self.key_source = judge_api_key(base_url, api_key_env)
        # the client insists on a key: a server that wants none is sent a placeholder
        self.client = openai.OpenAI(base_url=base_url, api_key=key or "none", timeout=timeout, max_retries=0)
        if (urlparse(base_url).hostname or "").lower() != OPENAI_HOST:
            self.client.organization = self.client.project = None  # OPENAI_ORG_ID / OPENAI_PROJECT_ID's
        self.url = str(self.client.base_url)

    def check_endpoint(self) -> None:
        """One one-token request: an unreachable endpoint, a refused key or an unknown model is a
        JudgeFailure now, in seconds, before any completion is generated."""
        probe = [{"role": "user", "content": "Reply with the word OK."}]
        try:
            self._call(probe, max_tokens=1, timeout=min(self.client.timeout, 30.0))
        except BadReply as exc:
            if exc.reason in ("timeout", "connection"):
                raise JudgeFailure(f"the judge at {self.url} cannot be reached ({exc.reason})") from None
            # any other answer means the endpoint, key and model are there

    def grade(self, beginnings: Sequence[str], completions: Sequence[str], progress: bool = True) -> JudgeResult:
        """Grade each (beginning, completion) pair, up to `concurrency` conversations at a time."""
        result = JudgeResult(self.model)
        try:
            with ThreadPoolExecutor(self.concurrency) as pool:
                jobs = pool.map(self._conversation, beginnings, completions)
                for outcome in tqdm(jobs, total=len(beginnings), desc="judging", unit="story", disable=not progress):
                    if isinstance(outcome, dict):
                        result.grades.append(outcome)
                    elif outcome.reason == "parse_failure":
                        result.parse_failures += 1
                    else:
                        result.errors[outcome.reason] += 1
        except JudgeFailure as exc:
            raise JudgeFailure(f"{exc}; the replies so far are cached in {self.cache_dir}, so a re-run asks "
                               "only for the rest") from None
        return result

    def _conversation(self, beginning: str, completion: str) -> dict | Unanswered:
        first = [{"role": "user", "content": FIRST_TURN.format(beginning=beginning, completion=completion)}]
        assessment = self._ask(first, lambda reply: reply.strip() != "")
        if isinstance(assessment, Unanswered):
            return assessment
        second = first + [{"role": "assistant", "content": self._cut(assessment)},
                          {"role": "user", "content": SECOND_TURN}]
        spelled_out = second[:-1] + [{"role": "user", "content": SECOND_TURN + GRADE_FORMAT}]
        reply = self._ask(second, lambda text: parse_grades(text) is not None, again=spelled_out)
        return reply if isinstance(reply, Unanswered) else parse_grades(reply)

    def _cut(self, assessment: str) -> str:
        """The first turn's reply, cut at a sentence end to leave the second turn room."""
        if len(assessment) <= self.assessment_chars:
            return assessment
        head = assessment[:self.assessment_chars]
        end = max(head.rfind(". "), head.rfind(".\n"))
        return head[:end + 1] if end > 0 else head

    def _ask(self, messages: list[dict], usable: Callable[[str], bool],
             again: list[dict] | None = None) -> str | Unanswered:
        """The judge's usable reply to `messages`, else to `again` (by default the same messages:
        a judge that answers at temperature 0 says the same thing twice, so a caller may say
        more); then the request is Unanswered, with the reason."""
        for attempt in (messages, again or messages):
            reply = self._reply(attempt)
            if isinstance(reply, Unanswered):
                return reply
            if usable(reply):
                with self._cache_lock:  # two conversations alike (a story twice) share one temp name
                    atomic_write_text(self._cache_path(attempt),
                                      json.dumps({"model": self.model, "messages": attempt, "reply": reply}))
                return reply
        return Unanswered("parse_failure")

    def _cache_path(self, messages: list[dict]) -> Path:
        key = hashlib.sha256(json.dumps([self.model, messages], sort_keys=True).encode()).hexdigest()
        return self.cache_dir / f"{key}.json"

    def _reply(self, messages: list[dict]) -> str | Unanswered:
        """The cached (usable) reply, else the judge's, each error retried with backoff up to
        ATTEMPTS calls; then Unanswered with the last error's reason."""
        if self._cache_path(messages).exists():
            return json.loads(self._cache_path(messages).read_text(encoding="utf-8"))["reply"]
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._call(messages)
            except BadReply as exc:
                if attempt == ATTEMPTS:
                    return Unanswered(exc.reason)
                time.sleep(self.backoff_s * 2 ** (attempt - 1))

    def _call(self, messages: list[dict], max_tokens: int | None = None, timeout: float | None = None) -> str:
        """One request's reply text; BadReply for what a retry may fix, JudgeFailure for what it cannot."""
        import openai

        try:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0, max_tokens=max_tokens or self.max_tokens,
                timeout=timeout or openai.NOT_GIVEN)
        except (json.JSONDecodeError, UnicodeDecodeError):  # a body labelled JSON that is not
            raise BadReply("not_json") from None
        except openai.APITimeoutError:
            raise BadReply("timeout") from None
        except openai.APIConnectionError:
            raise BadReply("connection") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise JudgeFailure(f"the judge at {self.url} refused the key ({self.key_source}; set JUDGE_API_KEY or "
                               "--judge-api-key-env NAME for a key of your own)") from None
        except openai.NotFoundError:
            raise JudgeFailure(f"the judge at {self.url} has no model {self.model!r} (HTTP 404: check --judge-model, "
                               "and that --judge-url ends in its API path, e.g. /v1)") from None
        except openai.APIStatusError as exc:
            raise BadReply(f"http_{exc.status_code}") from None
        except openai.APIResponseValidationError:
            raise BadReply("not_json") from None
        return self._text(response)

    def _text(self, response) -> str:
        """The first choice's text; BadReply when the body is no chat completion."""
        if isinstance(response, (str, bytes, list)) or not hasattr(response, "choices"):
            raise BadReply("not_json")
        if not response.choices:
            raise BadReply("no_choices")
        message = getattr(response.choices[0], "message", None)
        content = getattr(message, "content", None)
        if message is None or not isinstance(content, (str, type(None))):
            raise BadReply("not_a_completion")
        if len(content or "") > self.max_reply_chars:
            raise BadReply("too_long")
        return content or ""


# ---------------------------------------------------------------------------------------------
# Calibration: can this judge tell a story from its words shuffled?


def interval(values: Sequence[float]) -> dict:
    """Mean and 95% interval (normal approximation) of `values`; no interval from fewer than two."""
    mean = round(statistics.fmean(values), 3) if values else None
    if len(values) < 2:
        return {"mean": mean, "low": None, "high": None}
    half = 1.96 * statistics.stdev(values) / len(values) ** 0.5
    return {"mean": mean, "low": round(mean - half, 3), "high": round(mean + half, 3)}


def calibration(results: dict[str, JudgeResult]) -> dict:
    """Per kind ("true", "model", "shuffled") each grade's mean and interval; `fit` when the true
    rest's interval lies above the shuffled one's on every grade."""
    table = {kind: {"n": len(result.grades), **{name: interval([g[name] for g in result.grades]) for name in GRADES}}
             for kind, result in results.items()}
    true, shuffled = table["true"], table["shuffled"]
    table["fit"] = all(true[g]["low"] is not None and shuffled[g]["high"] is not None
                       and true[g]["low"] > shuffled[g]["high"] for g in GRADES)
    return table


def _cell(name: str, stats: dict) -> str:
    if stats["low"] is not None:
        return f"{name} {stats['mean']:.2f} [{stats['low']:.2f}-{stats['high']:.2f}]"
    return f"{name} {stats['mean']:.2f}" if stats["mean"] is not None else f"{name} -"


def calibration_lines(table: dict) -> list[str]:
    lines = ["  calibration (mean [95% interval]):"]
    for kind in ("true", "model", "shuffled"):
        lines.append(f"    {kind:8s} (n {table[kind]['n']}): " + ", ".join(_cell(g, table[kind][g]) for g in GRADES))
    if table["fit"]:
        verdict = "yes (the true rest beats the shuffled one on every grade)"
    elif min(table["true"]["n"], table["shuffled"]["n"]) < 2:
        verdict = "NO: too few readable grades to compare (it needs two or more of each); use it for smoke tests only"
    else:
        verdict = "NO: it cannot tell a story from its words shuffled on every grade; use it for smoke tests only"
    return lines + ["  fit to compare models: " + verdict]


RERUN_NOTE = "a re-run asks the judge only for those (answered replies are cached, see --judge-cache-dir)"


def unanswered(summary: dict) -> int:
    """Conversations without grades: parse failures and errors."""
    return summary["parse_failures"] + sum(summary.get("errors", {}).values())


def judge_lines(summary: dict) -> list[str]:
    """The judge's grades for the text report."""
    errors = ", ".join(f"{reason} {count}" for reason, count in summary.get("errors", {}).items()) or "none"
    if not summary["n"]:
        lines = [f"Judge {summary['model']}: no reply could be graded ({summary['parse_failures']} parse failures; "
                 f"errors: {errors})"]
    else:
        grades = ", ".join(f"{name} {summary[name]:.2f}" for name in GRADES)
        ages = " ".join(f"{group}:{count}" for group, count in summary["age_groups"].items() if count)
        lines = [f"Judge {summary['model']} ({summary['n']} stories, 1-10): {grades}",
                 f"  age groups {ages}; parse failures {summary['parse_failures']}; errors: {errors}"]
    if unanswered(summary):
        lines.append(f"  {unanswered(summary)} of {summary['n'] + unanswered(summary)} unanswered: {RERUN_NOTE}")
    if summary.get("calibration"):
        lines += calibration_lines(summary["calibration"])
    return lines


@dataclass(frozen=True)
class JudgeOptions:
    url: str  # an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1
    model: str
    prompts: int = 20  # story beginnings to complete and grade
    concurrency: int = 4
    cache_dir: str = DEFAULT_CACHE_DIR
    timeout: float = DEFAULT_TIMEOUT_S
    max_tokens: int = DEFAULT_MAX_TOKENS
    api_key_env: str | None = None
    calibrate: bool = False

    def check(self, data: str | None = None, prompts_file: str | None = None) -> None:
        if self.prompts < 1 or self.concurrency < 1:
            raise EvaluationError("--judge-prompts and --judge-concurrency must be at least 1")
        if not self.url or not self.model:
            raise EvaluationError("the judge needs both --judge-url and --judge-model")
        if self.timeout <= 0 or self.max_tokens < 16:
            raise EvaluationError("--judge-timeout must be positive and --judge-max-tokens at least 16")
        if self.calibrate and (prompts_file is not None or data is None):
            raise EvaluationError("--judge-calibrate needs --data (each story's true rest), not --prompts")

    def judge(self) -> Judge:
        return Judge(self.url, self.model, self.cache_dir, self.concurrency, self.timeout, self.api_key_env,
                     self.max_tokens)


def judge_splits(options: JudgeOptions, data: str | None, prompts_file: str | None,
                 seed: int) -> list[tuple[str, str | None]]:
    """(beginning, true rest or None) to complete: the first lines of --prompts, else stories of
    --data cut mid-sentence."""
    from src.data.sources import open_source
    from src.evaluation.stories import load_prompts

    if prompts_file is not None:
        return [(prompt, None) for prompt in load_prompts(prompts_file)[:options.prompts]]
    if data is None:
        raise EvaluationError("the judge needs story beginnings: give --data TEXT (cut mid-sentence) or --prompts FILE")
    return story_splits(open_source(data, split="validation").stories(), options.prompts, seed)


def prepare_judge(options: JudgeOptions, data: str | None, prompts_file: str | None,
                  seed: int) -> tuple[Judge, list[tuple[str, str | None]]]:
    """The checked judge and its story splits, before anything big is loaded or generated."""
    options.check(data, prompts_file)
    splits = judge_splits(options, data, prompts_file, seed)
    check_writable(options.cache_dir)
    judge = options.judge()
    judge.check_endpoint()
    return judge, splits


def check_writable(cache_dir: str) -> None:
    """The reply cache must take files, or no re-run would be cheap: fail before any work."""
    try:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as exc:
        raise EvaluationError(f"--judge-cache-dir {cache_dir}: cannot write there ({exc.strerror or exc})") from None


def judge_completions(generator, judge: Judge, splits: Sequence[tuple[str, str | None]], params, seed: int,
                      calibrate: bool = False) -> dict:
    """Complete each beginning (`params`, seed + i for the i-th), have the judge grade it, and
    with `calibrate` grade the true and shuffled rests beside it."""
    beginnings = [beginning for beginning, _ in splits]
    completions = [generator.generate(beginning, params.replace(seed=seed + i)).text
                   for i, beginning in enumerate(tqdm(beginnings, desc="completing", unit="story", leave=False))]
    model = judge.grade(beginnings, completions)
    summary = model.to_dict()
    if calibrate:
        rng = random.Random(seed)
        rests = [rest for _, rest in splits]
        summary["calibration"] = calibration({
            "true": judge.grade(beginnings, rests),
            "model": model,
            "shuffled": judge.grade(beginnings, [shuffled_words(rest, rng) for rest in rests]),
        })
    return summary


def add_judge_arguments(parser) -> None:
    """The judge's flags, the same in both evaluators."""
    group = parser.add_argument_group("LLM judge (the TinyStories paper's evaluation)")
    group.add_argument("--judge-url", help="an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or "
                       "http://127.0.0.1:8080/v1 (llama-server)")
    group.add_argument("--judge-model", help="the judge's model name, e.g. gpt-4o")
    group.add_argument("--judge-api-key-env", metavar="NAME",
                       help="the environment variable holding the judge's key (default: JUDGE_API_KEY; "
                       "OPENAI_API_KEY is sent to api.openai.com only)")
    group.add_argument("--judge-prompts", type=int, default=20,
                       help="story beginnings to complete and grade (default 20): cut mid-sentence from --data's "
                       "stories, or the first lines of --prompts")
    group.add_argument("--judge-concurrency", type=int, default=4, help="judge requests at once (default 4)")
    group.add_argument("--judge-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help=f"seconds one judge request may take before it is retried (default {DEFAULT_TIMEOUT_S:g})")
    group.add_argument("--judge-max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                       help=f"longest reply per judge turn, in tokens (default {DEFAULT_MAX_TOKENS})")
    group.add_argument("--judge-calibrate", action="store_true",
                       help="also grade each story's true rest and the true rest with its words shuffled, and say "
                       "whether the judge tells them apart (needs --data)")
    group.add_argument("--judge-cache-dir", default=DEFAULT_CACHE_DIR,
                       help=f"replies kept here by judge model and conversation (default {DEFAULT_CACHE_DIR})")


def judge_options(args) -> JudgeOptions | None:
    """The judge's options from the parsed flags; None without --judge-url (no judge)."""
    if not args.judge_url and not args.judge_model:
        return None
    return JudgeOptions(args.judge_url, args.judge_model or "", args.judge_prompts, args.judge_concurrency,
                        args.judge_cache_dir, args.judge_timeout, args.judge_max_tokens, args.judge_api_key_env,
                        args.judge_calibrate)
