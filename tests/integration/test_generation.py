"""Generator (Tunix Sampler + our fixes) against the full-recompute greedy reference.

Tiny random Gemma 1/2/3 models (sliding window 8 for Gemma 2/3): greedy decoding with a KV cache,
left padding and batch padding must give exactly the tokens of `greedy_reference_batch`, which
re-runs the whole sequence at every step. The real Gemma 3 270M must give exactly the greedy
tokens transformers wrote for each prompt alone (stored in tests/fixtures/reference/).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from flax import nnx

from kaggle_lib.generation import Generator, StopMatcher
from kaggle_lib.models import loader, registry
from kaggle_lib.models.tokenizer import load_tokenizer
from tests.generation_reference import greedy_reference, greedy_reference_batch

NEW_TOKENS = 32
# Different lengths (3 to 30 tokens with bos, tiny tokenizer): left padding from 0 to 27 slots,
# more than the sliding window of 8.
PROMPTS = [
    "Tom has 3 apples.",
    "What is 12 + 30? Answer with reasoning, step by step now",
    "Hi",
    "A train leaves at 5 pm",
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer(loader.TINY_TOKENIZER_DIR / "tokenizer.model")


def tiny_model(family: str, tokenizer: Any, seed: int = 2) -> Any:
    """A tiny random Tunix model whose output depends on its context.

    Tunix's default init (zero MLPs, attention weights of std 0.01, zero norm scales) makes
    every tiny model repeat a token, which no attention bug could change. With a small
    embedding and unit-scale layers (values picked so that every family writes >= 8 distinct
    tokens out of 32 for every prompt) the layers, and so the attention, decide the output.
    """
    spec = registry.get_spec(f"{family}-tiny")
    config = registry.tunix_config(spec, vocab_size=tokenizer.vocab_size)
    model = loader._random_model(spec, config, None, seed)
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    keys = jax.random.split(jax.random.key(seed), len(flat))
    for key, (path, variable) in zip(keys, flat, strict=True):
        value = variable.get_value()
        if "input_embedding" in path:
            scale = 0.03
        elif value.ndim >= 2:
            scale = 2.0 / np.sqrt(config.embed_dim)
        else:  # norm scales
            scale = 0.5
        variable.set_value(jax.random.normal(key, value.shape, value.dtype) * scale)
    return model


def assert_exact(model: Any, tokenizer: Any, prompts: list[str], eos_ids: list[int], *,
                 batch_size: int, refs: list[list[int]] | None = None) -> list[list[int]]:
    refs = refs or greedy_reference_batch(model, tokenizer, prompts, NEW_TOKENS, eos_ids)
    longest = max(len(tokenizer.encode(p)) + 1 for p in prompts)
    generator = Generator(model, tokenizer, eos_ids, max_prompt_len=longest,
                          max_new_tokens=NEW_TOKENS)
    gens = generator.generate(prompts, temperature=0, batch_size=batch_size)
    for prompt, gen, ref in zip(prompts, gens, refs, strict=True):
        first = next((i for i, (a, b) in enumerate(zip(gen.token_ids, ref, strict=False))
                      if a != b), None)
        assert gen.token_ids == ref, (
            f"{prompt!r}: sampler {gen.token_ids} != reference {ref} (first difference at {first})"
        )
        assert gen.truncated == (len(ref) == NEW_TOKENS)
        assert gen.text == tokenizer.decode(ref)
    return refs


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_greedy_matches_full_recompute(family: str, tokenizer: Any) -> None:
    model = tiny_model(family, tokenizer)
    lengths = [len(tokenizer.encode(p)) + 1 for p in PROMPTS]
    assert len(set(lengths)) == len(lengths), lengths
    window = getattr(model.config, "sliding_window_size", None)
    if family != "gemma":
        # The window is crossed, and left padding alone exceeds it for the shortest prompt.
        assert window == 8 and min(lengths) + NEW_TOKENS > window
        assert max(lengths) - min(lengths) > window
    free = greedy_reference_batch(model, tokenizer, PROMPTS, NEW_TOKENS, [1])
    # The test only means something if outputs depend on the context.
    assert all(len(set(ref)) >= 8 for ref in free), free
    # A second stop id taken from one output, so both stopping and running out are checked.
    eos_ids = [1, free[1][10]]
    refs = greedy_reference_batch(model, tokenizer, PROMPTS, NEW_TOKENS, eos_ids)
    assert any(len(r) < NEW_TOKENS for r in refs) and any(len(r) == NEW_TOKENS for r in refs)
    # batch_size 3: the second batch holds one prompt and two copies of it.
    assert_exact(model, tokenizer, PROMPTS, eos_ids, batch_size=3, refs=refs)
    assert greedy_reference(model, tokenizer, PROMPTS[2], NEW_TOKENS, eos_ids) == refs[2]


def test_generated_pad_token_stays_visible(tokenizer: Any) -> None:
    """A model that emits <pad> (id 0) keeps attending to it (Tunix masks it: fix 2)."""
    model = tiny_model("gemma", tokenizer)
    free = greedy_reference_batch(model, tokenizer, PROMPTS, NEW_TOKENS, [1])
    # Tied embeddings: a pad row just above an emitted token's row makes pad win there.
    embedding = model.embedder.input_embedding
    table = embedding.get_value()
    embedding.set_value(table.at[0].set(table[free[0][5]] * 1.05))
    refs = greedy_reference_batch(model, tokenizer, PROMPTS, NEW_TOKENS, [1])
    assert any(0 in r[:-1] and any(t != 0 for t in r[r.index(0):]) for r in refs), refs
    assert_exact(model, tokenizer, PROMPTS, [1], batch_size=4, refs=refs)


class StubTokenizer:
    """Just enough of a tokenizer for Generator's checks."""

    def __init__(self, bos: int = 2, eos: int = 1, pad: int = 0) -> None:
        self.ids = {"bos": bos, "eos": eos, "pad": pad}

    def bos_id(self) -> int:
        return self.ids["bos"]

    def eos_id(self) -> int:
        return self.ids["eos"]

    def pad_id(self) -> int:
        return self.ids["pad"]

    def encode(self, text: str) -> list[int]:
        return [5] * len(text)

    def decode(self, ids: list[int]) -> str:
        return "x" * len(ids)


@pytest.mark.parametrize("name", ["bos", "eos", "pad"])
def test_unset_special_ids_are_refused(name: str, tokenizer: Any) -> None:
    model = tiny_model("gemma3", tokenizer)
    with pytest.raises(ValueError, match=rf"{name}_id=-1.*never stop"):
        Generator(model, StubTokenizer(**{name: -1}), [1])


@pytest.mark.parametrize(("ids", "eos_ids", "message"), [
    ({"bos": 0, "pad": 5}, [1], "bos_id=0"),
    ({"pad": 2}, [1], "pad_id == bos_id"),
    ({}, [], "non-empty"),
    ({}, [0], "pad id"),
])
def test_unusable_special_ids_are_refused(ids: dict[str, int], eos_ids: list[int], message: str,
                                          tokenizer: Any) -> None:
    model = tiny_model("gemma3", tokenizer)
    with pytest.raises(ValueError, match=message):
        Generator(model, StubTokenizer(**ids), eos_ids)
    # The same model with Gemma's ids is accepted.
    Generator(model, StubTokenizer(), [1])


@pytest.fixture(scope="module")
def gemma3_generator(tokenizer: Any) -> Generator:
    model = tiny_model("gemma3", tokenizer)
    return Generator(model, tokenizer, [1], max_prompt_len=32, max_new_tokens=16)


def _tokens(gens: list[Any]) -> list[list[int]]:
    return [g.token_ids for g in gens]


def test_seeded_sampling_repeats_and_differs(gemma3_generator: Generator) -> None:
    sample = dict(temperature=1.0, top_p=0.95, top_k=64, batch_size=4)
    first = _tokens(gemma3_generator.generate(PROMPTS, seed=7, **sample))
    assert _tokens(gemma3_generator.generate(PROMPTS, seed=7, **sample)) == first
    other = _tokens(gemma3_generator.generate(PROMPTS, seed=8, **sample))
    assert other != first
    greedy = _tokens(gemma3_generator.generate(PROMPTS, batch_size=4))
    assert first != greedy  # sampling really sampled
    # top_k=1 is greedy whatever the seed and temperature.
    top1 = gemma3_generator.generate(PROMPTS, temperature=2.0, top_k=1, seed=3, batch_size=4)
    assert _tokens(top1) == greedy


def test_batch_padding_and_per_batch_keys(gemma3_generator: Generator) -> None:
    five = PROMPTS + ["Anna reads 4 pages a day"]
    eight = five + ["Hi there", "What is 2 + 2?", "Sam has 10 coins"]
    for settings in ({}, {"temperature": 1.0, "seed": 11}):
        padded = gemma3_generator.generate(five, batch_size=4, **settings)  # 5th: 3 copies
        full = gemma3_generator.generate(eight, batch_size=4, **settings)  # 5th: 3 others
        assert _tokens(padded) == _tokens(full[:5]), settings
    # One prompt 8 times, batches of 4: each batch draws its own noise.
    same = gemma3_generator.generate([PROMPTS[0]] * 8, temperature=1.0, seed=0, batch_size=4)
    assert _tokens(same[:4]) != _tokens(same[4:])
    # Seeds do not collide across batches (with `seed + start`, seed 0's second batch of 4
    # drew exactly what seed 4's first batch drew).
    seed4 = gemma3_generator.generate([PROMPTS[0]] * 4, temperature=1.0, seed=4, batch_size=4)
    assert _tokens(same[4:]) != _tokens(seed4)


def test_one_compilation_for_all_batches(tokenizer: Any) -> None:
    model = tiny_model("gemma3", tokenizer)
    generator = Generator(model, tokenizer, [1], max_prompt_len=64, max_new_tokens=8)
    # 10 prompts of many lengths in batches of 4: three batches, the last one padded.
    prompts = [" ".join(["apples"] * n) for n in range(1, 11)]
    generator.generate(prompts, batch_size=4)
    generator.generate(prompts[:3], batch_size=4)
    assert generator.compilations() == {"prefill": 1, "decode": 1}
    # The prefill projects only the last prompt position onto the vocabulary.
    assert generator.sampler._supports_decode_only_last_token


def test_generate_rejects_bad_arguments(gemma3_generator: Generator) -> None:
    with pytest.raises(ValueError, match="max_new_tokens must be in 1..16"):
        gemma3_generator.generate(PROMPTS, max_new_tokens=17)
    with pytest.raises(ValueError, match="exceeds max_prompt_len 32"):
        gemma3_generator.generate(["apples " * 40])
    with pytest.raises(ValueError, match="top_p"):
        gemma3_generator.generate(PROMPTS, temperature=1.0, top_p=0.0)
    with pytest.raises(TypeError, match="not one string"):
        gemma3_generator.generate("one prompt")
    assert gemma3_generator.generate([]) == []


# ----------------------------------------------------------------------------- real 270M

# transformers' greedy continuations of the committed prompts (scripts/make_reference_logits.py):
# test_gguf_270m checks the converted weights' logits on the same prompts.
REF_270M = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "gemma3_270m.json"


@pytest.fixture(scope="module")
def gemma3_270m() -> Any:
    # The converted model is cached on disk (KAGGLE_LIB_CACHE) and shared by every test session.
    return loader.load_model("gemma3-270m", source="pypi")


@pytest.mark.slow
def test_real_270m_greedy_matches_transformers(gemma3_270m: Any) -> None:
    """The one real-270M exactness test: the Generator (KV cache, the four prompts of different
    lengths left-padded into one batch) writes, token for token, the 32-token greedy
    continuation transformers wrote for each committed prompt alone, unpadded (float32, eager
    attention). It stands for both the full-recompute comparison this test made (any slip of
    the cache or the padding on the real model changes tokens) and test_gguf_270m's greedy one
    (the converted weights decode like transformers'), and needs no reference computed here."""
    model, tokenizer = gemma3_270m.model, gemma3_270m.tokenizer
    reference = json.loads(REF_270M.read_text())
    assert reference["greedy_new_tokens"] == NEW_TOKENS
    prompts = [p["text"] for p in reference["prompts"]]
    refs = [p["greedy_ids"] for p in reference["prompts"]]
    lengths = [len(tokenizer.encode(p)) + 1 for p in prompts]
    assert len(set(lengths)) == len(lengths) == 4, lengths
    assert [[int(tokenizer.bos_id()), *tokenizer.encode(p)] for p in prompts] == [
        p["ids"] for p in reference["prompts"]]  # the prompts transformers saw
    # No stop id in the reference: each row runs the whole 32 tokens, as the sampler must.
    assert not set(gemma3_270m.eos_ids) & {t for r in refs for t in r}
    assert all(len(set(r)) >= 5 for r in refs), refs
    assert_exact(model, tokenizer, prompts, gemma3_270m.eos_ids, batch_size=4, refs=refs)


# ----------------------------------------------------------------------------- stop strings

def test_stop_matcher_finds_the_first_occurrence_in_text() -> None:
    """Token by token, the matcher agrees with searching the joined text, however the stop
    string is split into tokens (random sequences over pieces that cut it everywhere)."""
    texts = ["<", "/", "</", " </", ".</", "answer", "answer>", "r>", ">", "><", ">\n", "a",
             "x", "", "</answer>", "er", "ans", "wer", "<<", "</answer>x"]
    matcher = StopMatcher("</answer>", texts)
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(3000):
        ids = rng.integers(0, len(texts), size=rng.integers(1, 12)).tolist()
        expected = next((i for i in range(len(ids))
                         if "</answer>" in "".join(texts[t] for t in ids[: i + 1])), None)
        assert matcher.first_stop(ids) == expected, [texts[t] for t in ids]
        found += expected is not None
    assert 100 < found < 2900  # both outcomes were exercised
    with pytest.raises(ValueError, match="empty"):
        StopMatcher("", texts)


def _raw_tokens(generator: Generator, prompts: list[str], max_new: int) -> list[list[int]]:
    """The sampler's output before Generator cuts it at stop strings (cut at eos only)."""
    result = generator.sampler(prompts, max_generation_steps=max_new,
                               max_prompt_length=generator.max_prompt_len,
                               eos_tokens=generator.eos_ids)
    return [np.asarray(t).tolist() for t in result.tokens]


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
def test_stop_strings_end_decoding_with_unchanged_tokens(family: str, tokenizer: Any) -> None:
    model = tiny_model(family, tokenizer)
    longest = max(len(tokenizer.encode(p)) + 1 for p in PROMPTS)
    plain = Generator(model, tokenizer, [1], max_prompt_len=longest, max_new_tokens=NEW_TOKENS)
    free = plain.generate(PROMPTS, batch_size=4)
    assert all(g.truncated for g in free)  # no eos: only the stop strings can end them
    # Row 0 stops on its first token (in the prefill step); the others a few tokens in, on a
    # string that spans two tokens; row 2's string comes from row 1's output.
    stops = [tokenizer.decode(free[0].token_ids[:1]), tokenizer.decode(free[1].token_ids[4:6]),
             tokenizer.decode(free[3].token_ids[6:8])]
    stopped = Generator(model, tokenizer, [1], max_prompt_len=longest, max_new_tokens=NEW_TOKENS,
                        stop_strings=stops)
    gens = stopped.generate(PROMPTS, batch_size=4)
    ends = []
    for gen, ref in zip(gens, free, strict=True):
        texts = [tokenizer.decode(ref.token_ids[: i + 1]) for i in range(len(ref.token_ids))]
        end = next((i + 1 for i, text in enumerate(texts) if any(s in text for s in stops)), None)
        assert end is not None  # every row meets a stop string within NEW_TOKENS
        assert gen.token_ids == ref.token_ids[:end]  # identical up to and including the stop
        assert gen.text == tokenizer.decode(ref.token_ids[:end])
        assert not gen.truncated
        ends.append(end)
    assert ends[0] == 1 and max(ends) < NEW_TOKENS
    # The decode loop itself ended once every row was done: nothing was written after the
    # last row's stop (the buffer keeps its pad), whereas the unstopped loop ran to the end.
    raw = _raw_tokens(stopped, PROMPTS, NEW_TOKENS)
    assert all(row[max(ends):] == [0] * (NEW_TOKENS - max(ends)) for row in raw), raw
    assert all(0 not in row for row in _raw_tokens(plain, PROMPTS, NEW_TOKENS))
    # Sampling stops the same way.
    sampled = stopped.generate(PROMPTS, batch_size=4, temperature=1.0, seed=3)
    unstopped = plain.generate(PROMPTS, batch_size=4, temperature=1.0, seed=3)
    for gen, ref in zip(sampled, unstopped, strict=True):
        assert ref.token_ids[: len(gen.token_ids)] == gen.token_ids
        assert gen.truncated or any(s in gen.text for s in stops)


def test_new_weights_reuse_the_compilations(tokenizer: Any) -> None:
    """Baseline evaluation, samples and trained evaluation share one Generator: new weights
    (set in place, or new Variable objects as a trainer may put in) are used, not recompiled."""
    model = tiny_model("gemma3", tokenizer)
    generator = Generator(model, tokenizer, [1], max_prompt_len=32, max_new_tokens=16)
    before = _tokens(generator.generate(PROMPTS, batch_size=4))
    assert generator.compilations() == {"prefill": 1, "decode": 1}
    assert generator.serves(model, 16) and not generator.serves(model, 17)
    assert not generator.serves(tiny_model("gemma3", tokenizer), 16)  # another module
    # "Training": every weight changes; half in place, half as new Variable objects.
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for index, (path, variable) in enumerate(flat):
        value = variable.get_value() * 1.5 + 0.01
        if index % 2:
            variable.set_value(value)
        else:
            parent = model
            for key in path[:-1]:
                parent = parent[key] if isinstance(key, int) else getattr(parent, key)
            replacement = copy.copy(variable)  # a new object with the same metadata
            replacement.set_value(value)
            setattr(parent, path[-1], replacement)
            assert getattr(parent, path[-1]) is not variable
    assert generator.serves(model, 16)
    after = _tokens(generator.generate(PROMPTS, batch_size=4))
    fresh = _tokens(Generator(model, tokenizer, [1], max_prompt_len=32,
                              max_new_tokens=16).generate(PROMPTS, batch_size=4))
    assert after == fresh and after != before  # the new weights, not the old ones
    assert generator.compilations() == {"prefill": 1, "decode": 1}
