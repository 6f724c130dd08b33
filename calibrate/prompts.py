"""Prompts of a controlled token length that differ from request to request, and the word approximation.

Why this matters: an engine that caches KV blocks (``transformers serve``, vLLM, TensorRT-LLM with KV reuse)
skips the prefill of any prefix it has seen. Prompts that share tokens make a calibration measure the cache,
not the engine: with the earlier builder, every word of ``WORDS`` encoded to ``<unk>`` under a word-level
vocabulary, so every request sent n copies of ``<unk>`` and a 7,435-token prefill took 48 ms on an H200,
half of what its FLOPs allow. So prompts come from the tokenizer's own vocabulary:

* **with a tokenizer** (``PromptBuilder(tokenizer=...)``, e.g. the checkpoint's Hugging Face tokenizer or a
  ``tokenizers.Tokenizer``): a pool of token ids is drawn from the vocabulary, keeping only ids that are
  not special or unknown and that survive a decode/encode round trip on their own; a prompt of ``n`` tokens
  is ``n`` ids drawn from the pool (seeded per request index), decoded, re-encoded and cut until its count
  matches. A tokenizer that yields too few usable ids stops with ``PromptError`` naming it.
* **without one** (``WORD_APPROXIMATION``): ``n`` words drawn from ``WORDS``, one token each under the
  approximation; the CPU stand-in engine (``calibrate.standin``) counts tokens the same way.

A prompt may start with a **shared prefix** (``prefix=(group, tokens)``): the first ``tokens`` tokens are the
group's (seeded by the group alone), the rest the request's own. That is how a plan asks for prefix reuse on
purpose (the prefix-caching probe, shared-prefix replays); nothing else shares more than chance.
``calibrate.prompt_check`` checks what a plan will send before any point is measured.
"""

from __future__ import annotations

import zlib
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
POOL_SIZE = 2048  # usable ids kept: enough that two random prompts share no prefix by chance
MIN_POOL = 64  # fewer usable ids than this: the tokenizer cannot make distinct prompts
_CANDIDATES = 8192  # ids tried (at most) to fill the pool
_NONSENSE = ("qzxqv", "zzqxj", "\u2603qfleet", "xq7vz9k")  # words no vocabulary holds whole
_UNKNOWN_NAMES = {"<unk>", "[unk]", "<|unk|>", "<unknown>", "unk"}
_PREFIX_SALT = 0x5EED


class PromptError(ValueError):
    """A tokenizer that cannot produce distinct prompts of controlled length; names the tokenizer."""


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


class TokenizerView:
    """One interface over a Hugging Face tokenizer, a ``tokenizers.Tokenizer`` or any encode/decode object."""

    def __init__(self, tokenizer: Any, name: str = ""):
        self.raw = tokenizer
        self.name = name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        self._fast = hasattr(tokenizer, "get_vocab_size") and not hasattr(tokenizer, "convert_ids_to_tokens")

    def encode(self, text: str) -> list[int]:
        if self._fast:  # tokenizers.Tokenizer
            return list(self.raw.encode(text, add_special_tokens=False).ids)
        return list(self.raw.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        if self._fast:
            return self.raw.decode(list(ids), skip_special_tokens=False)
        return self.raw.decode(list(ids))

    def vocab_size(self) -> int | None:
        for attr in ("get_vocab_size", "__len__"):
            fn = getattr(self.raw, attr, None)
            if callable(fn):
                try:
                    return int(fn())
                except TypeError:
                    continue
        size = getattr(self.raw, "vocab_size", None)
        return int(size) if isinstance(size, int) else None

    def token_name(self, token_id: int) -> str | None:
        for attr in ("id_to_token", "convert_ids_to_tokens"):
            fn = getattr(self.raw, attr, None)
            if callable(fn):
                try:
                    name = fn(int(token_id))
                except Exception:  # noqa: BLE001 - an id outside the vocabulary
                    return None
                return name if isinstance(name, str) else None
        return None

    def unusable_ids(self) -> frozenset[int]:
        """Special and unknown ids: the registered ones, ids named like ``<unk>``, and whatever nonsense words
        encode to when they do not decode back (a word-level vocabulary's unknown token)."""
        ids: set[int] = set()
        for attr in ("all_special_ids",):
            ids.update(int(i) for i in (getattr(self.raw, attr, None) or ()))
        for attr in ("unk_token_id", "bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self.raw, attr, None)
            if isinstance(value, int):
                ids.add(value)
        for word in _NONSENSE:
            got = self.encode(word)
            if len(got) == 1 and self.decode(got).strip() != word:
                ids.add(got[0])
        for i in range(min(8, self.vocab_size() or 0)):  # special tokens sit at the start of most vocabularies
            name = self.token_name(i)
            if name is not None and (name.lower() in _UNKNOWN_NAMES or (name.startswith("<") and name.endswith(">"))):
                ids.add(i)
        return frozenset(ids)


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


class PromptBuilder:
    """Builds the prompt of request ``index`` with ``n_tokens`` tokens; deterministic for a seed.

    Holds the vocabulary pool it draws from (built once, on first use), so it is not a value."""

    def __init__(self, seed: int = 0, tokenizer: Any = None, tokenizer_name: str = ""):
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.view = TokenizerView(tokenizer, tokenizer_name) if tokenizer is not None else None
        self._pool: np.ndarray | None = None
        self._unusable: frozenset[int] | None = None

    @property
    def method(self) -> str:
        if self.view is None:
            return WORD_APPROXIMATION
        return f"tokenizer '{self.view.name}': random ids from a pool of {len(self.pool())} usable vocabulary ids"

    # --- the vocabulary pool ------------------------------------------------------------------------

    def unusable_ids(self) -> frozenset[int]:
        if self.view is None:
            return frozenset()
        if self._unusable is None:
            self._unusable = self.view.unusable_ids()
        return self._unusable

    def pool(self) -> np.ndarray:
        """Usable ids: not special or unknown, and each decodes and re-encodes to itself."""
        if self.view is None:
            raise PromptError("the word approximation draws from calibrate.prompts.WORDS, not a vocabulary")
        if self._pool is not None:
            return self._pool
        view = self.view
        size = view.vocab_size()
        if not size or size < 2:
            raise PromptError(f"tokenizer '{view.name}': cannot tell its vocabulary size, so prompts cannot be "
                              f"drawn from its vocabulary")
        bad = self.unusable_ids()
        rng = np.random.default_rng([self.seed, 0x90C4B])
        candidates = rng.permutation(size)[:_CANDIDATES]
        kept: list[int] = []
        for token_id in candidates:
            token_id = int(token_id)
            if token_id in bad:
                continue
            text = view.decode([token_id])
            if text.strip() and view.encode(text) == [token_id]:
                kept.append(token_id)
                if len(kept) >= POOL_SIZE:
                    break
        if len(kept) < MIN_POOL:
            raise PromptError(
                f"tokenizer '{view.name}': only {len(kept)} of {len(candidates)} vocabulary ids tried are usable "
                f"(not special or unknown, and decode/encode back to themselves); at least {MIN_POOL} are needed "
                f"for distinct prompts. Use the checkpoint's real tokenizer, or engine.tokenizer: null for the "
                f"word approximation against servers that count words")
        self._pool = np.asarray(sorted(kept), dtype=np.int64)
        return self._pool

    # --- prompts ------------------------------------------------------------------------------------

    def _ids(self, key: list[int], n: int) -> list[int]:
        pool = self.pool()
        return [int(i) for i in pool[np.random.default_rng(key).integers(0, len(pool), n)]]

    def _words(self, key: list[int], n: int) -> list[str]:
        rng = np.random.default_rng(key)
        return [WORDS[i] for i in rng.integers(0, len(WORDS), n)]

    def prompt(self, index: int, n_tokens: int, prefix: tuple[int, int] | None = None) -> str:
        """The prompt of request ``index``; ``prefix=(group, tokens)`` starts it with the group's shared
        ``tokens`` tokens (at most ``n_tokens - 1``)."""
        if n_tokens < 1:
            raise ValueError(f"a prompt needs at least one token, got n_tokens={n_tokens}")
        shared = 0
        group = 0
        if prefix is not None:
            group, shared = int(prefix[0]), max(0, min(int(prefix[1]), n_tokens - 1))
        own_key = [self.seed, int(index)]
        prefix_key = [self.seed, _PREFIX_SALT, group]
        if self.view is None:
            words = self._words(prefix_key, shared) + self._words(own_key, n_tokens - shared)
            return " ".join(words)
        ids = self._ids(prefix_key, shared) + self._ids(own_key, n_tokens - shared + 8)
        return self._fit(ids, n_tokens, own_key)

    def count(self, text: str) -> int:
        if self.view is None:
            return approx_token_count(text)
        return len(self.view.encode(text))

    def _fit(self, ids: list[int], n_tokens: int, key: list[int]) -> str:
        """Decode ``ids`` cut so the text re-encodes to exactly ``n_tokens`` (or the closest count)."""
        view = self.view
        assert view is not None
        extra = 0
        while len(view.encode(view.decode(ids))) < n_tokens and extra < 4:  # a vocabulary that merges: add more
            ids = ids + self._ids(key + [extra], n_tokens)
            extra += 1
        cut = n_tokens
        best = view.decode(ids[:cut])
        best_gap = abs(self.count(best) - n_tokens)
        for _ in range(8):  # decode/encode round trips can merge or split at the cut
            if best_gap == 0:
                break
            got = self.count(view.decode(ids[:cut]))
            cut = max(1, min(cut + n_tokens - got, len(ids)))
            candidate = view.decode(ids[:cut])
            gap = abs(self.count(candidate) - n_tokens)
            if gap < best_gap:
                best, best_gap = candidate, gap
        return best
