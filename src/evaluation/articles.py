"""Articles (a / an / the) in what the model wrote.

The seed's test counted the prompt's own "a" and "the", so it could never fail. Here only the
continuation is counted: a continuation without articles scores 0 whatever the prompt says.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.evaluation.text import words

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
