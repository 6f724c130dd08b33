"""Prompts of a controlled token length, and the token-count approximation the stand-in engine shares.

Two ways to make a prompt of ``n`` tokens:

* **with a tokenizer** (``PromptBuilder(tokenizer=...)``, e.g. the checkpoint's Hugging Face tokenizer):
  random words are tokenized, cut to exactly ``n`` token ids and decoded; the text is re-encoded to
  check the count, and a word is added or removed until it matches (or the closest count is kept;
  the server's ``usage.prompt_tokens`` still reports the truth for every request).
* **without one** (the documented approximation, ``WORD_APPROXIMATION``): the prompt is ``n`` words
  drawn from ``WORDS``, short common lower-case English words, joined by single spaces, and its token
  count is its number of whitespace-separated words (``approx_token_count``). For Llama-2 /
  SentencePiece vocabularies each of these words with its leading space is one token, so the count is
  exact up to the BOS token a server adds; other vocabularies may split a few of them. The stand-in
  engine (``calibrate.standin``) counts prompt tokens with the same function, so against it the
  approximation is exact.

Prompts are random word sequences (seeded per request index), so no two share a long prefix and
prefix caching cannot shorten prefills.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

WORDS: tuple[str, ...] = (
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
    "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you",
    "were", "her", "she", "there", "one", "all", "we", "their", "has", "been", "if", "more", "when",
    "will", "would", "who", "so", "no", "can", "time", "new", "out", "up", "about", "than", "into",
    "them", "only", "other", "some", "could", "these", "two", "may", "then", "first", "any", "like",
    "now", "my", "such", "over", "our", "even", "most", "made", "after", "also", "did", "many", "before",
)
WORD_APPROXIMATION = (
    "word approximation: one token per whitespace-separated word drawn from calibrate.prompts.WORDS "
    "(exact for Llama-2/SentencePiece vocabularies up to the BOS token)"
)


def approx_token_count(text: str) -> int:
    """Tokens of a prompt under the word approximation: its number of whitespace-separated words."""
    return len(text.split())


def word_at(position: int) -> str:
    """The word the stand-in emits as output token ``position`` (deterministic)."""
    return WORDS[position % len(WORDS)]


def stable_hash(text: str) -> int:
    """A process-independent hash (Python's ``hash`` is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def load_tokenizer(path: str) -> Any:
    """A Hugging Face tokenizer from a checkpoint folder or hub id; a clear error without transformers."""
    try:
        from transformers import AutoTokenizer  # optional dependency
    except ImportError:
        raise RuntimeError(
            f"tokenizer '{path}' was asked for but the 'transformers' package is not installed; install it "
            f"or set the plan's engine.tokenizer to null to use the {WORD_APPROXIMATION}"
        ) from None
    return AutoTokenizer.from_pretrained(path)


@dataclass(frozen=True)
class PromptBuilder:
    """Builds the prompt of request ``index`` with ``n_tokens`` tokens; deterministic for a seed."""

    seed: int = 0
    tokenizer: Any = None

    @property
    def method(self) -> str:
        return "tokenizer" if self.tokenizer is not None else WORD_APPROXIMATION

    def _words(self, index: int, n: int) -> list[str]:
        rng = np.random.default_rng([self.seed, index])
        return [WORDS[i] for i in rng.integers(0, len(WORDS), n)]

    def prompt(self, index: int, n_tokens: int) -> str:
        if n_tokens < 1:
            raise ValueError(f"a prompt needs at least one token, got n_tokens={n_tokens}")
        if self.tokenizer is None:
            return " ".join(self._words(index, n_tokens))
        return self._tokenized(index, n_tokens)

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return approx_token_count(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _tokenized(self, index: int, n_tokens: int) -> str:
        words = self._words(index, n_tokens + 8)
        text = " ".join(words)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        while len(ids) < n_tokens:  # a vocabulary that merges words: add more
            words += self._words(index + 7919 * len(words), n_tokens)
            text = " ".join(words)
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        best = self.tokenizer.decode(ids[:n_tokens])
        best_gap = abs(self.count(best) - n_tokens)
        cut = n_tokens
        for _ in range(6):  # decode/encode round trips can merge or split at the cut
            if best_gap == 0:
                break
            got = self.count(self.tokenizer.decode(ids[:cut]))
            cut += n_tokens - got
            cut = max(1, min(cut, len(ids)))
            candidate = self.tokenizer.decode(ids[:cut])
            gap = abs(self.count(candidate) - n_tokens)
            if gap < best_gap:
                best, best_gap = candidate, gap
        return best
