"""Every generation metric on hand-written texts: each one can fail, and none counts the prompt."""

import pytest

from src.evaluation.metrics import count_articles
from src.evaluation import EvaluationError
from src.evaluation.metrics import CHECKS, score_grammar, starts_with_vowel_sound
from src.evaluation.stories import DEFAULT_PROMPTS, load_prompts
from src.evaluation.metrics import distinct_n, longest_repeated_ngram, score_repetition
from src.evaluation.stories import score_sample
from src.evaluation.compare import best_preset, quality
from src.evaluation.stories import summarize
from src.evaluation.metrics import sentences, words
from src.generation.engine import GenerationResult
from src.generation.postprocess import postprocess

GOOD_STORY = 'Tom saw a big dog. The dog ran to an old tree. "Hi!" said Tom. They played all day.'
LOOP = "the cat sat on the mat. " * 8
VARIED = ("Lily found a red ball in the garden. She threw it to her brother, who laughed and "
          "kicked it over the fence. A kind neighbour gave it back with a smile.")


def result(prompt: str, text: str, finish: str = "eos", tokens: int = 10, seconds: float = 0.5) -> GenerationResult:
    return GenerationResult(prompt=prompt, text=text, token_ids=list(range(tokens)), finish_reason=finish,
                            seed=1, prompt_tokens=3, seconds=seconds, time_to_first_token=0.01)


# --- articles ---------------------------------------------------------------------------------

def test_articles_are_counted_in_the_continuation_not_the_prompt():
    sample = score_sample("balanced", result("Once upon a time there was a", " dog. It ran home."))
    assert sample.articles == 0 and sample.articles_per_100_words == 0.0
    assert summarize([sample]).article_presence == 0.0


def test_article_counts_and_density():
    count = count_articles(" a cat and the dog saw an owl")
    assert (count.articles, count.words, count.present) == (3, 8, True)
    assert count.per_100_words == pytest.approx(37.5)
    assert count_articles("").per_100_words == 0.0
    assert count_articles("then they ate").present is False  # "the" inside "then"/"they" is no article


# --- grammar ----------------------------------------------------------------------------------

def test_a_well_formed_story_scores_full_marks():
    grammar = score_grammar(GOOD_STORY)
    assert grammar.score == pytest.approx(10.0), grammar.checks


@pytest.mark.parametrize("check, bad_text", [
    ("sentence_capitals", "The dog ran. he was happy. she smiled."),
    ("terminal_punctuation", "The dog ran to the park and"),
    ("no_doubled_words", "The the dog dog ran."),
    ("balanced_quotes", 'She said, "Come here.'),
    ("article_agreement", "He ate a apple."),
    ("punctuation_spacing", "The dog ran , and ran ."),
    ("subject_verb_agreement", "He were happy and they is sad."),
])
def test_each_grammar_check_can_fail(check, bad_text):
    assert CHECKS[check](bad_text, 0) < 1.0
    assert score_grammar(bad_text).score < 10.0


def test_doubled_words_are_penalised_but_style_repeats_are_not():
    assert score_grammar("the the dog dog ran.").checks["no_doubled_words"] == 0.0
    assert score_grammar("The dog ran.").checks["no_doubled_words"] == 1.0
    for fine in ("It went far, far away.", "She had a boo-boo.", "She had had enough."):
        assert score_grammar(fine).checks["no_doubled_words"] == 1.0, fine


def test_missing_terminal_punctuation_loses_the_point():
    assert score_grammar("The dog ran home").checks["terminal_punctuation"] == 0.0
    assert score_grammar("The dog ran home.").checks["terminal_punctuation"] == 1.0
    assert score_grammar('"Come home!"').checks["terminal_punctuation"] == 1.0
    assert score_grammar("The dog ran home").score < score_grammar("The dog ran home.").score


def test_article_sound_rule_and_its_exceptions():
    assert starts_with_vowel_sound("apple") and starts_with_vowel_sound("hour")
    assert not starts_with_vowel_sound("unicorn") and not starts_with_vowel_sound("one")
    assert score_grammar("He saw an owl, a unicorn and an hour glass.").checks["article_agreement"] == 1.0
    assert score_grammar("He saw a owl and an dog.").checks["article_agreement"] == 0.0
    assert score_grammar("He saw dogs.").checks["article_agreement"] is None  # nothing to judge


def test_subject_verb_agreement_spares_subjunctives_and_questions():
    for fine in ("He was happy.", "It looked as if he were flying.", '"Can I? Is it safe?" asked Ant.'):
        assert score_grammar(fine).checks["subject_verb_agreement"] in (1.0, None), fine
    assert score_grammar("They was sad. She is happy.").checks["subject_verb_agreement"] == 0.5


def test_dialogue_tags_are_not_new_sentences():
    assert len(sentences('"Why are you sad?" he asked. The cow sighed.')) == 2
    assert score_grammar('"Why are you sad?" he asked.').checks["sentence_capitals"] == 1.0


def test_only_the_models_text_is_judged():
    prompt = "Once upon a time there was"
    story = prompt + " a cat"
    grammar = score_grammar(story, model_start=len(prompt))
    assert grammar.checks["sentence_capitals"] is None  # the prompt's capital earns nothing
    assert grammar.checks["terminal_punctuation"] == 0.0
    assert score_grammar(prompt + "", model_start=len(prompt)).checks["terminal_punctuation"] == 0.0
    # a sentence the model starts in lower case fails even though the prompt's sentence is fine
    assert score_grammar("The sun was warm. the end.", model_start=17).checks["sentence_capitals"] == 0.0


def test_raw_and_post_processed_text_are_scored_separately():
    sample = score_sample("balanced", result("The happy cat found", " a ball. it was red. she played"))
    assert sample.postprocessed == postprocess(sample.story)
    assert sample.grammar_checks_raw["sentence_capitals"] == 0.0
    assert sample.grammar_checks_raw["terminal_punctuation"] == 0.0
    assert sample.grammar_checks_postprocessed["terminal_punctuation"] == 1.0
    assert sample.grammar_raw < sample.grammar_postprocessed  # the clean-up cannot hide in the raw score


# --- repetition -------------------------------------------------------------------------------

def test_a_looping_text_scores_low_on_every_repetition_metric():
    loop, varied = score_repetition(LOOP), score_repetition(VARIED)
    assert loop.unique_word_ratio < 0.15 < 0.8 < varied.unique_word_ratio
    assert loop.distinct_2 < 0.15 < 0.9 < varied.distinct_2
    assert loop.longest_repeated_ngram >= 30 and varied.longest_repeated_ngram <= 2


def test_longest_repeated_ngram_and_pooled_distinct():
    assert longest_repeated_ngram("a b c x a b c".split()) == 3
    assert longest_repeated_ngram("a b c".split()) == 0
    assert longest_repeated_ngram([]) == 0
    same = words("the dog ran home")
    assert distinct_n([same], 1) == 1.0
    assert distinct_n([same, same], 1) == 0.5  # two seeds telling the same story lose diversity
    assert score_repetition("").unique_word_ratio == 0.0


# --- summaries and the preset rule ------------------------------------------------------------

def test_summary_counts_eos_length_and_speed():
    samples = [
        score_sample("balanced", result("The happy cat found", " a ball. It was red.", "eos", 8, 0.5)),
        score_sample("balanced", result("The happy cat found", " it it it it it it", "length", 12, 0.5)),
    ]
    summary = summarize(samples)
    assert summary.eos_rate == 0.5 and summary.article_presence == 0.5
    assert summary.mean_tokens == (9 + 12) / 2  # EOS counts as a generated token
    assert summary.tokens_per_s == pytest.approx(21 / 1.0)
    assert summary.longest_repeated_ngram_max == 5
    assert summary.grammar_checks_raw["balanced_quotes"] is None  # no quotes anywhere: not applicable


def test_best_preset_follows_the_documented_rule():
    good = summarize([score_sample("a", result("The happy cat found", " a ball. It was red."))])
    bad = summarize([score_sample("b", result("The happy cat found", " it it it it", "length"))])
    assert quality(good) > quality(bad)
    assert best_preset({"creative": bad, "balanced": good}) == "balanced"
    assert best_preset({"conservative": good, "balanced": good}) == "conservative"  # tie: first listed


# --- prompts ----------------------------------------------------------------------------------

def test_prompts_file(tmp_path):
    assert load_prompts(None) == list(DEFAULT_PROMPTS) and len(DEFAULT_PROMPTS) == 5
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\n\nThe dog\n  A cat  \n", encoding="utf-8")
    assert load_prompts(path) == ["The dog", "A cat"]
    path.write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="no prompts"):
        load_prompts(path)
    with pytest.raises(EvaluationError, match="not found"):
        load_prompts(tmp_path / "missing.txt")


def test_terminal_punctuation_is_judged_on_stories_the_model_ended():
    ended = score_sample("balanced", result("The happy cat found", " a ball and", "eos"))
    cut = score_sample("balanced", result("The happy cat found", " a ball and", "length"))
    assert ended.grammar_checks_raw["terminal_punctuation"] == 0.0
    assert cut.grammar_checks_raw["terminal_punctuation"] is None  # the token limit's doing: see eos_rate
    assert summarize([ended, cut]).eos_rate == 0.5
