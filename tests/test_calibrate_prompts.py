"""Prompts that differ, from the tokenizer's own vocabulary, and the check that stops a plan before measuring.

Uses the shipped word-level tokenizer of the random-weight checkpoint (``build_random_llama.word_tokenizer_model``,
the one that sent every request ``<unk> <unk> ...`` with the earlier builder) and the stand-in's word approximation.
"""

from __future__ import annotations

import numpy as np
import pytest

from calibrate.prompt_check import PromptSample, check_prompts, raise_if_bad
from calibrate.prompts import WORDS, PromptBuilder, PromptError, TokenizerView
from experiments.real_engine.build_random_llama import word_tokenizer_model

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def word_tok():
    return word_tokenizer_model(32000)


def test_the_old_words_are_unknown_to_the_shipped_tokenizer(word_tok):
    view = TokenizerView(word_tok)
    assert view.encode(" ".join(WORDS[:10])) == [0] * 10  # every English word is <unk>, id 0
    assert view.unusable_ids() == {0, 1, 2}  # <unk>, <s>, </s>: found although none is registered as special


def test_prompts_come_from_the_vocabulary_with_exact_lengths(word_tok):
    builder = PromptBuilder(seed=0, tokenizer=word_tok)
    pool = builder.pool()
    assert len(pool) == 2048 and not set(pool.tolist()) & {0, 1, 2}
    for n in (1, 16, 511, 2048, 8192):
        ids = TokenizerView(word_tok).encode(builder.prompt(11, n))
        assert len(ids) == n
        assert not set(ids) & {0, 1, 2}
    assert builder.prompt(3, 64) == PromptBuilder(seed=0, tokenizer=word_tok).prompt(3, 64)
    assert builder.prompt(3, 64) != builder.prompt(4, 64) != PromptBuilder(seed=1, tokenizer=word_tok).prompt(4, 64)


def test_shared_prefixes_only_where_asked(word_tok):
    builder = PromptBuilder(seed=0, tokenizer=word_tok)
    view = TokenizerView(word_tok)
    a = view.encode(builder.prompt(1, 300, prefix=(7, 256)))
    b = view.encode(builder.prompt(2, 300, prefix=(7, 256)))
    c = view.encode(builder.prompt(3, 300, prefix=(8, 256)))
    assert a[:256] == b[:256] and a[256] != b[256]
    assert a[0] != c[0] or a[:4] != c[:4]
    short = view.encode(builder.prompt(4, 10, prefix=(7, 256)))  # the prefix is cut to the prompt - 1
    assert short[:9] == a[:9] and len(short) == 10 and short[9] != a[9]


def test_check_passes_distinct_prompts_and_counts_what_it_saw(word_tok):
    builder = PromptBuilder(seed=0, tokenizer=word_tok)
    samples = [PromptSample(f"r{i}", builder.prompt(i, 512), 512) for i in range(40)]
    samples += [PromptSample(f"g{i}", builder.prompt(100 + i, 600, prefix=(1, 512)), 600, 1, 512) for i in range(3)]
    check = check_prompts(builder, samples)
    assert check.ok and check.samples == 43
    assert check.worst_unusable_fraction == 0.0 and check.worst_count_error_tokens == 0
    assert check.longest_unintended_shared_tokens <= 2  # chance: a few tokens from a pool of 2,048


def test_check_stops_the_all_unknown_prompts_of_the_old_builder(word_tok):
    builder = PromptBuilder(seed=0, tokenizer=word_tok)
    rng = np.random.default_rng(0)
    old = [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 512)) for _ in range(4)]
    check = check_prompts(builder, [PromptSample(f"burst request {i}", t, 512) for i, t in enumerate(old)])
    assert not check.ok and check.worst_unusable_fraction == 1.0
    assert "burst request 0: 100 % of its 512 tokens are unknown or special" in check.problems[0]
    assert any("share their first 512 tokens" in p for p in check.problems)
    with pytest.raises(PromptError, match="tokenizer 'w'.*nothing was measured"):
        raise_if_bad(check, "tokenizer 'w'")


def test_check_flags_the_same_prompt_sent_by_two_points(word_tok):
    builder = PromptBuilder(seed=0, tokenizer=word_tok)
    same = builder.prompt(5, 300)
    check = check_prompts(builder, [PromptSample("burst 4 req/s request 5", same, 300),
                                    PromptSample("burst 8 req/s request 5", same, 300),
                                    PromptSample("fit request 0", builder.prompt(6, 300), 310)])
    assert [p.split(":")[0] for p in check.problems] == ["fit request 0", "burst 4 req/s request 5 and burst 8 req/s "
                                                                          "request 5 share their first 300 tokens beyond any prefix the workload asks for (at most 32 allowed)"]


def test_a_tokenizer_without_usable_ids_is_named():
    class OnlySpecials:
        name_or_path = "broken-tok"
        all_special_ids = list(range(100))

        def __len__(self):
            return 100

        def encode(self, text, add_special_tokens=False):
            return [0 for _ in text.split()]

        def decode(self, ids):
            return " ".join("<unk>" for _ in ids)

    with pytest.raises(PromptError, match="tokenizer 'broken-tok': only 0 of 100 vocabulary ids"):
        PromptBuilder(tokenizer=OnlySpecials()).prompt(0, 10)


def test_the_word_approximation_makes_distinct_prompts_for_the_stand_in():
    builder = PromptBuilder(seed=3)
    samples = [PromptSample(f"r{i}", builder.prompt(i, 200), 200) for i in range(30)]
    check = check_prompts(builder, samples)
    assert check.ok and check.worst_count_error_tokens == 0
    a, b = builder.prompt(1, 50, prefix=(2, 20)).split(), builder.prompt(9, 50, prefix=(2, 20)).split()
    assert a[:20] == b[:20] and a[20:] != b[20:]
