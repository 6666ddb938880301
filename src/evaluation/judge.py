"""The TinyStories paper's evaluation (Eldan & Li 2023, arXiv:2305.07759, "GPT-Eval").

A story beginning is cut mid-sentence, the model completes it, and a strong chat model grades
the completion as a teacher grades a student, in two turns: a general assessment of
`beginning***completion`, then grades for grammar, creativity, consistency with the beginning
and plot (1-10), and a guess of the writer's age group (A: 3 or under ... F: 13-16).

Any OpenAI-compatible chat endpoint can judge (OpenAI, llama.cpp's llama-server, Ollama, vLLM),
through the `openai` client. Replies are cached on disk by judge model and conversation, so a
re-run costs nothing; a reply whose grades cannot be read is asked for once more, then counted
as a parse failure and left out of the means. Grades depend on the judge: compare models only
under the same judge.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from src.atomic_files import atomic_write_text
from src.evaluation.errors import EvaluationError

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
GRADES = ("grammar", "creativity", "consistency", "plot")
AGE_GROUPS = "ABCDEF"
DEFAULT_CACHE_DIR = "data/judge_cache"


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


def story_beginnings(stories: Iterable[str], count: int, seed: int) -> list[str]:
    """`count` beginnings cut from the first stories that can be cut (the same ones for a seed)."""
    rng = random.Random(seed)
    beginnings = []
    for story in stories:
        beginning = cut_mid_sentence(story, rng)
        if beginning is not None:
            beginnings.append(beginning)
            if len(beginnings) == count:
                break
    if len(beginnings) < count:
        raise EvaluationError(f"the text holds only {len(beginnings)} stories long enough to cut; asked for {count}")
    return beginnings


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


@dataclass
class JudgeResult:
    model: str
    grades: list[dict] = field(default_factory=list)  # one per parsed conversation
    parse_failures: int = 0

    def to_dict(self) -> dict:
        summary = {"model": self.model, "n": len(self.grades)}
        for name in GRADES:
            values = [g[name] for g in self.grades]
            summary[name] = round(statistics.fmean(values), 3) if values else None
        summary["age_groups"] = {group: sum(g["age_group"] == group for g in self.grades) for group in AGE_GROUPS}
        summary["parse_failures"] = self.parse_failures
        return summary


class Judge:
    """Grades completions through an OpenAI-compatible chat endpoint, with an on-disk cache."""

    def __init__(self, base_url: str, model: str, cache_dir: str | Path = DEFAULT_CACHE_DIR,
                 concurrency: int = 4, timeout: float = 120.0, api_key: str | None = None) -> None:
        import openai

        self.model = model
        self.cache_dir = Path(cache_dir)
        self.concurrency = max(1, concurrency)
        key = api_key or os.environ.get("OPENAI_API_KEY") or "none"  # local servers take any key
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=1)

    def grade(self, beginnings: Sequence[str], completions: Sequence[str], progress: bool = True) -> JudgeResult:
        """Grade each (beginning, completion) pair, up to `concurrency` conversations at a time."""
        result = JudgeResult(self.model)
        with ThreadPoolExecutor(self.concurrency) as pool:
            jobs = pool.map(self._conversation, beginnings, completions)
            for grades in tqdm(jobs, total=len(beginnings), desc="judging", unit="story", disable=not progress):
                if grades is None:
                    result.parse_failures += 1
                else:
                    result.grades.append(grades)
        return result

    def _conversation(self, beginning: str, completion: str) -> dict | None:
        first = [{"role": "user", "content": FIRST_TURN.format(beginning=beginning, completion=completion)}]
        assessment = self._ask(first, lambda reply: reply.strip() != "")
        if assessment is None:
            return None
        second = first + [{"role": "assistant", "content": assessment}, {"role": "user", "content": SECOND_TURN}]
        reply = self._ask(second, lambda text: parse_grades(text) is not None)
        return None if reply is None else parse_grades(reply)

    def _ask(self, messages: list[dict], usable: Callable[[str], bool]) -> str | None:
        """The judge's reply (cached, if usable); an unusable reply is asked for once more."""
        key = hashlib.sha256(json.dumps([self.model, messages], sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / f"{key}.json"
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))["reply"]
        for _ in range(2):
            reply = self._call(messages)
            if usable(reply):
                atomic_write_text(path, json.dumps({"model": self.model, "messages": messages, "reply": reply}))
                return reply
        return None

    def _call(self, messages: list[dict]) -> str:
        import openai

        try:
            response = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0)
        except openai.APIConnectionError as exc:
            raise EvaluationError(f"the judge at {self.client.base_url} cannot be reached ({exc})") from None
        except (openai.AuthenticationError, openai.PermissionDeniedError):
            raise EvaluationError(f"the judge at {self.client.base_url} refused the key (set OPENAI_API_KEY)") from None
        except openai.NotFoundError:
            raise EvaluationError(f"the judge at {self.client.base_url} has no model {self.model!r}") from None
        except openai.APIStatusError as exc:
            raise EvaluationError(f"the judge answered HTTP {exc.status_code}: {str(exc)[:200]}") from None
        content = response.choices[0].message.content if response.choices else None
        return content or ""


def judge_lines(summary: dict) -> list[str]:
    """The judge's grades for the text report."""
    if not summary["n"]:
        return [f"Judge {summary['model']}: no reply could be graded ({summary['parse_failures']} parse failures)"]
    grades = ", ".join(f"{name} {summary[name]:.2f}" for name in GRADES)
    ages = " ".join(f"{group}:{count}" for group, count in summary["age_groups"].items() if count)
    return [f"Judge {summary['model']} ({summary['n']} stories, 1-10): {grades}",
            f"  age groups {ages}; parse failures {summary['parse_failures']}"]


@dataclass(frozen=True)
class JudgeOptions:
    url: str  # an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1
    model: str
    prompts: int = 20  # story beginnings to complete and grade
    concurrency: int = 4
    cache_dir: str = DEFAULT_CACHE_DIR

    def check(self) -> None:
        if self.prompts < 1 or self.concurrency < 1:
            raise EvaluationError("--judge-prompts and --judge-concurrency must be at least 1")
        if not self.url or not self.model:
            raise EvaluationError("the judge needs both --judge-url and --judge-model")


def judge_beginnings(options: JudgeOptions, data: str | None, prompts_file: str | None, seed: int) -> list[str]:
    """The beginnings to complete: the first lines of --prompts, else stories of --data cut mid-sentence."""
    from src.data.sources import open_source
    from src.evaluation.prompts import load_prompts

    if prompts_file is not None:
        return load_prompts(prompts_file)[:options.prompts]
    if data is None:
        raise EvaluationError("the judge needs story beginnings: give --data TEXT (cut mid-sentence) or --prompts FILE")
    return story_beginnings(open_source(data, split="validation").stories(), options.prompts, seed)


def judge_completions(generator, options: JudgeOptions, beginnings: Sequence[str], params, seed: int) -> dict:
    """Complete each beginning (`params`, seed + i for the i-th) and have the judge grade it."""
    completions = [generator.generate(beginning, params.replace(seed=seed + i)).text
                   for i, beginning in enumerate(tqdm(beginnings, desc="completing", unit="story", leave=False))]
    judge = Judge(options.url, options.model, options.cache_dir, options.concurrency)
    return judge.grade(beginnings, completions).to_dict()


def add_judge_arguments(parser) -> None:
    """The judge's flags, the same in both evaluators."""
    group = parser.add_argument_group("LLM judge (the TinyStories paper's evaluation)")
    group.add_argument("--judge-url", help="an OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or "
                       "http://127.0.0.1:8080/v1 (llama-server); the key comes from OPENAI_API_KEY")
    group.add_argument("--judge-model", help="the judge's model name, e.g. gpt-4o")
    group.add_argument("--judge-prompts", type=int, default=20,
                       help="story beginnings to complete and grade (default 20): cut mid-sentence from --data's "
                       "stories, or the first lines of --prompts")
    group.add_argument("--judge-concurrency", type=int, default=4, help="judge requests at once (default 4)")
    group.add_argument("--judge-cache-dir", default=DEFAULT_CACHE_DIR,
                       help=f"replies kept here by judge model and conversation (default {DEFAULT_CACHE_DIR})")


def judge_options(args) -> JudgeOptions | None:
    """The judge's options from the parsed flags; None without --judge-url (no judge)."""
    if not args.judge_url and not args.judge_model:
        return None
    return JudgeOptions(args.judge_url, args.judge_model or "", args.judge_prompts, args.judge_concurrency,
                        args.judge_cache_dir)
