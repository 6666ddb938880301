"""Token cache: one EOS after each story, keyed by tokenizer + source, never used stale or torn."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from src.data.cache import CacheError, cache_paths, load_or_build_token_cache, load_token_cache, token_dtype
from src.data.sources import MAX_STORY_CHARS, open_source
from src.data.tokenizer import EOS_TOKEN, train_bpe_tokenizer
from tests.conftest import REPO_ROOT, TINY_STORIES

STORIES = TINY_STORIES + ["Zoë saw a 🐉 and said 你好.", "The end."]


@pytest.fixture()
def story_file(tmp_path):
    path = tmp_path / "stories.txt"
    path.write_text("".join(f"{s}\n{EOS_TOKEN}\n" for s in STORIES), encoding="utf-8")
    return path


def build(story_file, tokenizer, cache_dir, **kwargs):
    return load_or_build_token_cache(open_source(story_file), tokenizer, cache_dir, show_progress=False, **kwargs)


def test_one_eos_after_each_story_and_counts(story_file, tokenizer, tmp_path):
    cache = build(story_file, tokenizer, tmp_path / "cache", stories_per_chunk=3)  # several chunks
    eos = tokenizer.token_to_id(EOS_TOKEN)
    tokens = np.asarray(cache.tokens)
    expected = []
    for story in STORIES:
        expected += tokenizer.encode(story, add_special_tokens=False).ids + [eos]
    assert tokens.tolist() == expected
    assert cache.tokens.dtype == np.uint16 and not cache.tokens.flags.writeable
    assert (tokens == eos).sum() == len(STORIES) == cache.n_stories and tokens[-1] == eos
    assert cache.n_tokens == len(expected)
    assert cache.n_bytes == sum(len(s.encode("utf-8")) for s in STORIES)
    pieces = np.split(tokens, np.flatnonzero(tokens == eos) + 1)[:-1]
    assert [tokenizer.decode(p[:-1].tolist()) for p in pieces] == STORIES
    assert cache.path.parent == tmp_path / "cache" and cache.path.suffix == ".bin"


def test_second_call_reuses_the_cache(story_file, tokenizer, tmp_path):
    first = build(story_file, tokenizer, tmp_path)
    mtime = first.path.stat().st_mtime_ns
    second = build(story_file, tokenizer, tmp_path)
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".bin", ".json")) == sorted(
        [first.path.name, first.path.with_suffix(".json").name]
    )


def test_new_tokenizer_or_changed_source_gets_a_new_cache(story_file, tokenizer, tmp_path):
    other = train_bpe_tokenizer(TINY_STORIES * 20, vocab_size=300, min_frequency=1)
    a = build(story_file, tokenizer, tmp_path)
    b = build(story_file, other, tmp_path)
    assert a.path != b.path and b.meta["tokenizer_sha256"] != a.meta["tokenizer_sha256"]
    assert np.asarray(b.tokens).tolist() != np.asarray(a.tokens).tolist()
    story_file.write_text(story_file.read_text(encoding="utf-8") + "One more story.\n", encoding="utf-8")
    c = build(story_file, tokenizer, tmp_path)
    assert c.path != a.path and c.n_stories == a.n_stories + 1
    # a sidecar claiming another tokenizer is refused when checked against this one
    with pytest.raises(CacheError, match="tokenizer_sha256"):
        load_token_cache(b.path, tokenizer)


def test_truncated_cache_is_detected_and_rebuilt(story_file, tokenizer, tmp_path, caplog):
    cache = build(story_file, tokenizer, tmp_path)
    good = np.asarray(cache.tokens).copy()
    del cache
    path = cache_paths(open_source(story_file), tokenizer, tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(CacheError, match="truncated"):
        load_token_cache(path, tokenizer)
    with caplog.at_level("WARNING"):
        rebuilt = build(story_file, tokenizer, tmp_path)
    assert "rebuilding token cache" in caplog.text
    assert np.array_equal(np.asarray(rebuilt.tokens), good)


def test_right_size_wrong_contents_is_detected_and_rebuilt(story_file, tokenizer, tmp_path, caplog):
    cache = build(story_file, tokenizer, tmp_path)
    good = np.asarray(cache.tokens).copy()
    path = cache.path
    del cache
    garbage = np.full(len(good), 65000, dtype=good.dtype)  # ids far beyond the vocabulary, same size
    path.write_bytes(garbage.tobytes())
    with pytest.raises(CacheError, match="sha256"):
        load_token_cache(path, tokenizer)
    with caplog.at_level("WARNING"):
        rebuilt = build(story_file, tokenizer, tmp_path)
    assert "rebuilding token cache" in caplog.text
    assert np.array_equal(np.asarray(rebuilt.tokens), good)


def test_missing_or_mismatched_sidecar_is_rebuilt(story_file, tokenizer, tmp_path):
    cache = build(story_file, tokenizer, tmp_path)
    sidecar = cache.path.with_suffix(".json")
    sidecar.unlink()
    with pytest.raises(CacheError, match="sidecar .* missing"):
        load_token_cache(cache.path)
    assert build(story_file, tokenizer, tmp_path).n_tokens == cache.n_tokens and sidecar.exists()
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "source_fingerprint": "elsewhere"}))
    with pytest.raises(CacheError, match="source_fingerprint"):
        load_token_cache(cache.path, tokenizer, open_source(story_file))
    assert build(story_file, tokenizer, tmp_path).meta["source_fingerprint"] == meta["source_fingerprint"]


def test_interrupted_build_leaves_no_cache(story_file, tokenizer, tmp_path, monkeypatch):
    import src.data.cache as cache_module

    real_fromiter = np.fromiter
    calls = {"n": 0}

    def failing_fromiter(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_fromiter(*args, **kwargs)

    monkeypatch.setattr(cache_module.np, "fromiter", failing_fromiter)
    with pytest.raises(KeyboardInterrupt):
        build(story_file, tokenizer, tmp_path, stories_per_chunk=2)
    assert list(tmp_path.iterdir()) == [story_file]  # no .bin, no sidecar, no temp file


def test_large_vocab_uses_uint32():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


HEADROOM = 512 << 20  # address space the tokenizing child may add to what its imports took


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux (/proc) to read a process's address space")
def test_separator_less_text_of_many_byte_characters_is_cached_in_bounded_memory(tmp_path):
    """The worst input for memory: no story separator, no whitespace, and four bytes (four
    tokens) a character. The data path train.py runs caches 12 MB of it in a child whose address
    space may grow by HEADROOM past its imports: chunks counted in characters do not fit."""
    rng = random.Random(0)
    text = tmp_path / "no_separators.txt"
    text.write_text("".join(rng.choices([chr(c) for c in range(0x1F600, 0x1F640)], k=3_000_000)), encoding="utf-8")
    code = f"""
import resource, warnings
warnings.simplefilter("ignore")
from src.data.cache import load_or_build_token_cache
from src.data.tokenizer import load_tokenizer
tokenizer = load_tokenizer("tokenizer/tinystories20k_4k")
tokenizer.encode_batch_fast(["start the encoding threads"] * 8)  # before the limit: their stacks
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
limit = int(status["VmSize"].split()[0]) * 1024 + {HEADROOM}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
cache = load_or_build_token_cache({str(text)!r}, tokenizer, {str(tmp_path / "cache")!r}, show_progress=False)
print(cache.n_tokens, cache.n_stories)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_tokens, n_pieces = map(int, proc.stdout.split())
    assert n_pieces >= 3_000_000 // MAX_STORY_CHARS and n_tokens >= 3_000_000 + n_pieces  # all of it, in pieces
