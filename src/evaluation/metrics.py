"""What a story's text is made of, and the scores that count it: words and sentences, articles,
grammar heuristics and repetition.

Every score measures what the model wrote (never the prompt), and every one can fall when the
stories get worse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass


# ---------------------------------------------------------------------------------------------
# Words and sentences of a story, the units every text metric counts.

# A word is a run of letters, with inner apostrophes ("don't", "Lily's"); digits count too.
_WORD = re.compile(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)*")
# A sentence ends at . ! ? (runs like "?!" or "..." included), plus any closing quotes/brackets.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*")


@dataclass(frozen=True)
class Sentence:
    text: str
    start: int  # character offsets in the text it came from
    end: int


def words(text: str) -> list[str]:
    """Lower-cased words, in order."""
    return [match.group(0).lower() for match in _WORD.finditer(text)]


def word_spans(text: str) -> list[tuple[str, int]]:
    """(lower-cased word, start offset) pairs, in order."""
    return [(match.group(0).lower(), match.start()) for match in _WORD.finditer(text)]


def _is_dialogue_tag_ahead(text: str, end: re.Match) -> bool:
    """'"Why?" he asked.' is one sentence: a closing quote followed by a lower-case word."""
    closes_quote = end.group(0)[-1:] in "\"'”’"
    return closes_quote and text[end.end() :].lstrip()[:1].islower()


def sentences(text: str) -> list[Sentence]:
    """Sentences with their offsets; a trailing unfinished sentence is included."""
    found = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if _is_dialogue_tag_ahead(text, match):
            continue
        found.append((start, match.end()))
        start = match.end()
    found.append((start, len(text)))
    result = []
    for begin, end in found:
        chunk = text[begin:end]
        stripped = chunk.lstrip()
        if not stripped.strip() or not _WORD.search(stripped):
            continue
        begin += len(chunk) - len(stripped)
        result.append(Sentence(text=text[begin:end].rstrip(), start=begin, end=end))
    return result


# ---------------------------------------------------------------------------------------------
# Articles (a / an / the) in what the model wrote.
# The seed's test counted the prompt's own "a" and "the", so it could never fail. Here only the
# continuation is counted: a continuation without articles scores 0 whatever the prompt says.

ARTICLES = frozenset({"a", "an", "the"})


@dataclass(frozen=True)
class ArticleCount:
    articles: int  # a / an / the in the continuation
    words: int  # words in the continuation

    @property
    def per_100_words(self) -> float:
        return 100.0 * self.articles / self.words if self.words else 0.0

    @property
    def present(self) -> bool:
        return self.articles > 0


def count_articles(continuation: str) -> ArticleCount:
    """Count articles in the generated continuation only (pass it without the prompt)."""
    tokens = words(continuation)
    return ArticleCount(articles=sum(word in ARTICLES for word in tokens), words=len(tokens))


# ---------------------------------------------------------------------------------------------
# Grammar heuristics: cheap surface checks, each one able to fail.
# The seed scored grammar after the post-processing that capitalises sentences and adds a final
# full stop, so its score repaired itself. Here every check looks at one text exactly as given;
# the evaluators score the raw model output and the post-processed text separately.
#
# Only what the model wrote is judged. `model_start` is the offset where the model's text begins
# (the prompt comes before it): a sentence wholly inside the prompt is never counted, and a
# capital letter the prompt supplied earns nothing.
#
# Each check returns a score in [0, 1], or None when the text gives it nothing to judge
# (e.g. no "a"/"an" at all). The grammar score is the mean of the applicable checks, times 10.
#
#     sentence_capitals     share of sentences started by the model that begin with a capital
#     terminal_punctuation  1 if the text ends with . ! or ? (optionally before a closing quote)
#     no_doubled_words      share of sentences without a word written twice in a row ("the the";
#                           "far, far" and "boo-boo" are style, not doubling; "had had" is allowed)
#     balanced_quotes       1 if double quotes are balanced ("..." pairs, “ ” matched)
#     article_agreement     share of "a"/"an" that fit the next word's sound ("a apple" fails)
#     punctuation_spacing   share of punctuation marks not preceded by a space ("dog ." fails)
#     subject_verb_agreement  share of pronoun + "to be" pairs that agree ("he were", "they is" fail)
#
# A story cut off by the token limit (finished=False) is not judged on terminal punctuation or
# quotes: its last sentence, and maybe a quotation, are open by construction. That is the
# limit's doing, and the evaluators report it as the share of stories ending with EOS.

_TERMINAL = re.compile(r"[.!?][\"'”’)\]]*\s*$")
_DOUBLED = re.compile(r"\b([A-Za-z]+(?:'[A-Za-z]+)?)\s+\1\b", re.IGNORECASE)  # only whitespace between
_DOUBLING_ALLOWED = frozenset({"had", "that"})  # "she had had enough", "he knew that that was"
_PUNCT = re.compile(r"[,.!?;:]")
_DOUBLE_QUOTES = ('"', "“", "”")
# "a" goes before a consonant sound, "an" before a vowel sound. Letters decide, except for
# these common words whose first letter misleads.
_VOWEL_SOUND_CONSONANT_LETTER = ("hour", "honest", "honor", "honour", "heir")
_CONSONANT_SOUND_VOWEL_LETTER = ("one", "once", "uni", "use", "usu", "uti", "eu", "ewe")


def sentence_capitals(text: str, model_start: int = 0) -> float | None:
    judged = [s for s in sentences(text) if s.start >= model_start]
    first_letters = [next((c for c in s.text if c.isalpha()), "") for s in judged]
    first_letters = [c for c in first_letters if c]
    if not first_letters:
        return None
    return sum(c.isupper() for c in first_letters) / len(first_letters)


def terminal_punctuation(text: str, model_start: int = 0) -> float | None:
    if not text[model_start:].strip():
        return 0.0  # the model wrote nothing, so it did not finish a sentence either
    return 1.0 if _TERMINAL.search(text) else 0.0


def no_doubled_words(text: str, model_start: int = 0) -> float | None:
    judged = [s for s in sentences(text) if s.end > model_start]
    if not judged:
        return None
    clean = sum(not has_doubled_word(sentence.text) for sentence in judged)
    return clean / len(judged)


def has_doubled_word(text: str) -> bool:
    return any(m.group(1).lower() not in _DOUBLING_ALLOWED for m in _DOUBLED.finditer(text))


def balanced_quotes(text: str, model_start: int = 0) -> float | None:
    if not any(q in text[model_start:] for q in _DOUBLE_QUOTES):
        return None
    straight_even = text.count('"') % 2 == 0
    curly_matched = text.count("“") == text.count("”")
    return 1.0 if straight_even and curly_matched else 0.0


def starts_with_vowel_sound(word: str) -> bool:
    word = word.lower()
    if word.startswith(_VOWEL_SOUND_CONSONANT_LETTER):
        return True
    if word.startswith(_CONSONANT_SOUND_VOWEL_LETTER):
        return False
    return word[:1] in "aeiou"


def article_agreement(text: str, model_start: int = 0) -> float | None:
    spans = word_spans(text)
    verdicts = []
    for (word, _), (following, start) in zip(spans, spans[1:]):
        if word in ("a", "an") and start >= model_start and following.isalpha():
            verdicts.append((word == "an") == starts_with_vowel_sound(following))
    return sum(verdicts) / len(verdicts) if verdicts else None


def punctuation_spacing(text: str, model_start: int = 0) -> float | None:
    marks = [m.start() for m in _PUNCT.finditer(text) if m.start() >= model_start]
    # "..." counts as one mark; only a space before its first dot matters
    marks = [i for i in marks if not (i > 0 and text[i - 1] in ".")]
    if not marks:
        return None
    return sum(not text[i - 1].isspace() for i in marks if i > 0) / len(marks)


# A pronoun directly followed by a form of "to be" it cannot take.
_WRONG_BE = {
    "i": {"is", "are"},
    "he": {"are", "am", "were"},
    "she": {"are", "am", "were"},
    "it": {"are", "am", "were"},
    "we": {"is", "am", "was"},
    "you": {"is", "am", "was"},
    "they": {"is", "am", "was"},
}
_BE = {"am", "is", "are", "was", "were"}
# "as if he were", "I wish it were", "in it were two gears": subjunctive or inverted, not wrong.
_SUBJUNCTIVE_OR_INVERTED = {"if", "wish", "in", "on"}


def subject_verb_agreement(text: str, model_start: int = 0) -> float | None:
    spans = word_spans(text)
    verdicts = []
    for i in range(len(spans) - 1):
        (subject, subject_start), (verb, verb_start) = spans[i], spans[i + 1]
        if subject not in _WRONG_BE or verb not in _BE or verb_start < model_start:
            continue
        if text[subject_start + len(subject) : verb_start].strip():
            continue  # "Can I? Is it safe?": punctuation between, not a pair
        before = spans[i - 1][0] if i else ""
        if verb == "were" and before in _SUBJUNCTIVE_OR_INVERTED:
            continue
        verdicts.append(verb not in _WRONG_BE[subject])
    return sum(verdicts) / len(verdicts) if verdicts else None


CHECKS: dict[str, Callable[[str, int], float | None]] = {
    "sentence_capitals": sentence_capitals,
    "terminal_punctuation": terminal_punctuation,
    "no_doubled_words": no_doubled_words,
    "balanced_quotes": balanced_quotes,
    "article_agreement": article_agreement,
    "punctuation_spacing": punctuation_spacing,
    "subject_verb_agreement": subject_verb_agreement,
}


NOT_JUDGED_WHEN_CUT = ("terminal_punctuation", "balanced_quotes")


@dataclass(frozen=True)
class GrammarScores:
    checks: dict[str, float | None]  # each check's score in [0, 1], None when not applicable

    @property
    def score(self) -> float:
        """Mean of the applicable checks, out of 10 (0 if none applies)."""
        applicable = [value for value in self.checks.values() if value is not None]
        return 10.0 * sum(applicable) / len(applicable) if applicable else 0.0


def score_grammar(text: str, model_start: int = 0, finished: bool = True) -> GrammarScores:
    """Run every check on `text`, judging only what starts at or after `model_start`.

    `finished=False` marks a story cut off by the token limit (see the module docstring).
    """
    checks = {name: check(text, model_start) for name, check in CHECKS.items()}
    if not finished:
        checks.update({name: None for name in NOT_JUDGED_WHEN_CUT})
    return GrammarScores(checks)


# ---------------------------------------------------------------------------------------------
# Repetition: how much of a story the model copied from itself.
# Small models fall into loops ("the cat sat. the cat sat. ..."). A loop lowers the unique-word
# ratio and distinct-n, and lengthens the longest repeated n-gram.

@dataclass(frozen=True)
class RepetitionScores:
    unique_word_ratio: float  # distinct words / words (higher is better)
    distinct_2: float  # distinct word bigrams / bigrams (higher is better)
    longest_repeated_ngram: int  # words in the longest n-gram seen twice or more (lower is better)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams / all n-grams, pooled over the given texts (0 when there are none).

    Pooled over many samples, it also drops when different seeds tell the same story.
    """
    pooled = [gram for tokens in token_lists for gram in ngrams(tokens, n)]
    return len(set(pooled)) / len(pooled) if pooled else 0.0


def longest_repeated_ngram(tokens: Sequence[str]) -> int:
    """Length of the longest word n-gram occurring at least twice (occurrences may overlap).

    If an n-gram repeats, so do its (n-1)-gram prefixes, so we grow n until nothing repeats.
    """
    length = 0
    for n in range(1, len(tokens)):
        grams = ngrams(tokens, n)
        if len(set(grams)) == len(grams):
            break
        length = n
    return length


def score_repetition(continuation: str) -> RepetitionScores:
    """Repetition scores of one continuation; an empty one scores 0 ratios (nothing written)."""
    tokens = words(continuation)
    return RepetitionScores(
        unique_word_ratio=len(set(tokens)) / len(tokens) if tokens else 0.0,
        distinct_2=distinct_n([tokens], 2),
        longest_repeated_ngram=longest_repeated_ngram(tokens),
    )
