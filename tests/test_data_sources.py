"""Text sources: every format parses to the same stripped stories; bad sources fail clearly."""

import json
import os

import pytest

from src.data import sources
from src.data.sources import DataSourceError, HubDataset, is_held_out, open_source

STORIES = ["Once upon a time, a cat sat.\nThe end.", "Lily found a ball. 🙂", "Ben ate café crème — 漢字."]


def write_txt(path, stories=STORIES):
    path.write_text("".join(f"{story}\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    return path


def test_txt_format_keeps_inner_newlines_strips_and_skips_empty(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(
        f"  {STORIES[0]}  \n<|endoftext|>\n\n<|endoftext|>\n{STORIES[1]}\n<|endoftext|>\n{STORIES[2]}",  # no final EOS
        encoding="utf-8",
    )
    assert list(open_source(path).stories()) == STORIES


def test_jsonl_and_json_with_text_or_story_field(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": s}) for s in STORIES) + "\n\n", encoding="utf-8")
    shard = tmp_path / "data00.json"  # llama2.c's shard layout: a list of records with "story"
    shard.write_text(json.dumps([{"story": s, "summary": "x"} for s in STORIES], indent=1), encoding="utf-8")
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"text": STORIES[0]}), encoding="utf-8")
    assert list(open_source(jsonl).stories()) == STORIES
    assert list(open_source(shard).stories()) == STORIES
    assert list(open_source(single).stories()) == STORIES[:1]


def test_json_array_is_decoded_across_chunk_edges(tmp_path):
    records = [{"story": f"story {i} " + "é" * (i % 7) + "x" * 9000} for i in range(50)]  # many read buffers
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    assert list(open_source(path).stories()) == [r["story"] for r in records]


def test_folder_and_glob_read_all_files_in_sorted_order(tmp_path):
    folder = tmp_path / "shards"
    (folder / "sub").mkdir(parents=True)
    write_txt(folder / "b.txt", STORIES[1:2])
    (folder / "a.jsonl").write_text(json.dumps({"story": STORIES[0]}) + "\n", encoding="utf-8")
    (folder / "sub" / "c.json").write_text(json.dumps([{"text": STORIES[2]}]), encoding="utf-8")
    (folder / "notes.md").write_text("not data", encoding="utf-8")
    assert list(open_source(folder).stories()) == STORIES
    assert list(open_source(str(folder / "*.txt")).stories()) == STORIES[1:2]
    assert list(open_source(str(folder / "**" / "*.json*")).stories()) == [STORIES[0], STORIES[2]]
    # several specs read in order
    assert list(open_source([folder / "b.txt", folder / "a.jsonl"]).stories()) == STORIES[1::-1]


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        open_source(tmp_path / "missing.txt")
    with pytest.raises(DataSourceError, match="no .* files match"):
        open_source(str(tmp_path / "*.jsonl"))
    with pytest.raises(DataSourceError, match="holds no .txt"):
        open_source(tmp_path)  # empty folder
    (tmp_path / "empty.txt").write_text("\n<|endoftext|>\n  \n", encoding="utf-8")
    with pytest.raises(DataSourceError, match="holds no stories"):
        list(open_source(tmp_path / "empty.txt").stories())
    (tmp_path / "bad.jsonl").write_text(json.dumps({"title": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match=r"bad.jsonl:1: record has no 'text' or 'story'.*'title'"):
        list(open_source(tmp_path / "bad.jsonl").stories())
    (tmp_path / "bad.json").write_text(json.dumps([{"text": "ok"}, {"body": "x"}]), encoding="utf-8")
    with pytest.raises(DataSourceError, match="record 1: record has no 'text' or 'story'"):
        list(open_source(tmp_path / "bad.json").stories())
    (tmp_path / "broken.json").write_text('[{"text": "ok"}, {"text": ', encoding="utf-8")
    with pytest.raises(DataSourceError, match="invalid JSON"):
        list(open_source(tmp_path / "broken.json").stories())
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataSourceError, match="not valid UTF-8"):
        list(open_source(tmp_path / "latin1.txt").stories())
    (tmp_path / "data.csv").write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(DataSourceError, match="unsupported file type"):
        open_source(tmp_path / "data.csv")
    assert issubclass(DataSourceError, ValueError)


def test_fingerprint_tracks_file_changes_and_selection(tmp_path, monkeypatch):
    path = write_txt(tmp_path / "a.txt")
    monkeypatch.chdir(tmp_path)
    before = open_source(path).fingerprint()
    assert open_source("./a.txt").fingerprint() == open_source("a.txt").fingerprint() == before
    assert open_source(path).head(2).fingerprint() != before
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert open_source(path).fingerprint() != before


def test_head_limits_stories(tmp_path):
    source = open_source(write_txt(tmp_path / "a.txt")).head(2)
    assert list(source.stories()) == STORIES[:2]


def test_hash_split_is_stable_disjoint_and_complete(tmp_path):
    stories = [f"Story number {i}. The dog ran." for i in range(400)]
    source = open_source(write_txt(tmp_path / "a.txt", stories))
    train, held_out = source.split_by_hash(0.1)
    train_stories, held_stories = list(train.stories()), list(held_out.stories())
    assert sorted(train_stories + held_stories) == sorted(stories)
    assert not set(train_stories) & set(held_stories)
    assert 15 < len(held_stories) < 70  # about 10%
    # membership depends on the text only, not on position or file
    shuffled = open_source(write_txt(tmp_path / "b.txt", stories[::-1])).split_by_hash(0.1)[1]
    assert sorted(shuffled.stories()) == sorted(held_stories)
    assert all(is_held_out(s, 0.1) for s in held_stories)
    assert len({train.fingerprint(), held_out.fingerprint(), source.fingerprint()}) == 3


def test_hub_dataset_names_and_streaming(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        if split == "missing":
            raise ValueError('Unknown split "missing".\nShould be one of [train, validation]')
        return [{"text": "  A story.  "}, {"text": ""}, {"text": "Another."}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(sources, "_hub_reachability", (True, "is reachable"))  # no network needed here
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = open_source("roneneldan/TinyStories", split="validation")
    assert source.parts == (HubDataset("roneneldan/TinyStories", "validation"),)
    assert open_source("hf:roneneldan/TinyStories:train").parts == (HubDataset("roneneldan/TinyStories", "train"),)
    assert list(source.stories()) == ["A story.", "Another."]
    assert calls == [("roneneldan/TinyStories", "validation", True)]
    assert source.fingerprint() == open_source("roneneldan/TinyStories:validation").fingerprint()
    assert source.fingerprint() != open_source("roneneldan/TinyStories").fingerprint()
    with pytest.raises(DataSourceError, match="split 'missing': Unknown split \"missing\". Without network"):
        list(open_source("roneneldan/TinyStories:missing").stories())


def offline_for_this_test_only(monkeypatch):
    """Undo, after the test, what going offline sets: the variable and the libraries' flags."""
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # "0": not asked for; the test's end removes it again
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", datasets.config.HF_HUB_OFFLINE)
    monkeypatch.setattr(sources, "_hub_reachability", None)


def test_datasets_streams_a_local_dataset_through_the_hub_path_even_offline(tmp_path, monkeypatch):
    """The real `datasets.load_dataset` on a local dataset folder: read online, and again after
    the one connect check found no network (datasets then runs offline)."""
    import socket

    folder = tmp_path / "local_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f" {s} "}) + "\n" for s in STORIES), encoding="utf-8")
    hub_part = HubDataset(str(folder), "train")
    monkeypatch.setattr(sources, "_hub_reachability", (True, "is reachable"))
    assert list(sources.TextSource((hub_part,)).stories()) == STORIES

    def no_network(address, timeout):
        raise OSError(101, "Network is unreachable")

    offline_for_this_test_only(monkeypatch)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert list(sources.TextSource((hub_part,)).stories()) == STORIES
    assert sources.hub_reachable()[0] is False and os.environ["HF_HUB_OFFLINE"] == "1"


def test_without_network_the_hub_is_asked_once_briefly_and_only_the_local_cache_is_used(monkeypatch):
    """No network: one short connect says so, then `datasets` runs offline (HF_HUB_OFFLINE
    semantics): a dataset cached before still loads, anything else fails at once, no retries."""
    import socket

    import datasets

    connects, offline_when_loading = [], []

    def no_network(address, timeout):
        connects.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    def cached_only(name, split, streaming):
        offline_when_loading.append(os.environ.get("HF_HUB_OFFLINE"))
        if split == "validation":
            return [{"text": "A cached story."}]
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    offline_for_this_test_only(monkeypatch)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(datasets, "load_dataset", cached_only)
    assert list(open_source("roneneldan/TinyStories:validation").stories()) == ["A cached story."]
    with pytest.raises(DataSourceError, match=r"hub is not reachable \(Name or service not known\) and the dataset "
                                              r"is not in the local cache.*config/smoke.yaml"):
        list(open_source("roneneldan/TinyStories:train").stories())
    assert len(connects) == 1 and connects[0][1] <= 5  # asked once, briefly
    assert offline_when_loading == ["1", "1"]


def test_missing_local_path_under_existing_folder_is_not_taken_for_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataSourceError, match="does not exist"):
        open_source("data/stories")
