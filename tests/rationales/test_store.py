"""The rationale store: framing, torn tails, corruption, identity, locking, one rationale per key."""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import zlib

import pytest

from fiat_t5x.rationales import store as store_lib
from fiat_t5x.rationales.store import (
    FailureRecord,
    RationaleRecord,
    RationaleStore,
    StoreCorruptError,
    StoreError,
    StoreIdentity,
    StoreLockedError,
    StoreMismatchError,
)

IDENTITY = StoreIdentity({"kind": "fake", "model": "m"}, {"temperature": 0.0}, "ab" * 32)


def rationale(example_id: str, text: str = "because", task: str = "t", split: str = "train"):
    return RationaleRecord(
        task=task,
        split=split,
        example_id=example_id,
        text=text,
        provider="fake",
        model="m",
        ibeta_sha256="ab" * 32,
        prompt_sha256="cd" * 32,
        decoding={"temperature": 0.0},
        time="2024-01-01T00:00:00+00:00",
        prompt_tokens=3,
        completion_tokens=4,
    )


def failure(example_id: str, permanent: bool = True):
    return FailureRecord(
        task="t",
        split="train",
        example_id=example_id,
        kind="http_400",
        message="bad",
        permanent=permanent,
        provider="fake",
        model="m",
        ibeta_sha256="ab" * 32,
        time="2024-01-01T00:00:00+00:00",
    )


def test_frame_is_crc32_of_the_json_payload():
    line = store_lib.encode_record(rationale("1", "ünïcode"))
    assert line.endswith(b"\n")
    crc, payload = line[:-1].split(b" ", 1)
    assert int(crc, 16) == zlib.crc32(payload)
    data = json.loads(payload)
    assert data["type"] == "rationale" and data["text"] == "ünïcode" and data["example_id"] == "1"
    assert store_lib.decode_record(line[:-1]) == rationale("1", "ünïcode")
    flipped = line[:-3] + bytes([line[-3] ^ 1]) + line[-2:-1]
    with pytest.raises(ValueError, match="checksum"):
        store_lib.decode_record(flipped)


def test_records_survive_reopen_and_index_by_task_split(tmp_path):
    with RationaleStore.open_for_writing(tmp_path, IDENTITY) as store:
        store.append([rationale("1", "one"), rationale("2", "two"), failure("3")])
        store.append([rationale("1", "other split", split="dev")])
    reader = RationaleStore.open_readonly(tmp_path)
    assert reader.texts("t", "train") == {"1": "one", "2": "two"}
    assert reader.texts("t", "dev") == {"1": "other split"}
    assert set(reader.failures("t", "train")) == {"3"}
    assert reader.task_splits() == [("t", "dev"), ("t", "train")]
    assert reader.rationale("t", "train", "2").completion_tokens == 4
    identity = json.loads((tmp_path / "identity.json").read_text())
    assert identity["sha256"] == IDENTITY.sha256


def test_a_store_in_a_bucket_is_read_like_a_local_one(tmp_path, monkeypatch):
    """A pod's hosts read one copy at a URL (gs://; file:// takes the same kvstore path)."""
    with RationaleStore.open_for_writing(tmp_path, IDENTITY) as store:
        store.append([rationale("1", "one"), rationale("2", "two"), failure("3")])
    records = tmp_path / "records.jsonl"
    records.write_bytes(records.read_bytes() + b"0000")  # a torn tail, as a live writer leaves
    reader = RationaleStore.open_readonly(f"file://{tmp_path}")
    assert reader.directory == f"file://{tmp_path}"
    assert reader.identity == IDENTITY
    assert reader.texts("t", "train") == {"1": "one", "2": "two"}
    assert set(reader.failures("t", "train")) == {"3"}
    with pytest.raises(FileNotFoundError, match="not a rationale store"):
        RationaleStore.open_readonly(f"file://{tmp_path}/nothing")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="written on local disk"):
        RationaleStore.open_for_writing(f"file://{tmp_path}/new", IDENTITY)
    assert not (tmp_path / "new").exists() and not (tmp_path / "file:").exists()


def test_a_rationale_settles_a_key_and_supersedes_failures(tmp_path):
    with RationaleStore.open_for_writing(tmp_path, IDENTITY) as store:
        store.append([failure("1", permanent=False), failure("2", permanent=True)])
        assert not store.is_settled("t", "train", "1", retry_failed=False)
        assert store.is_settled("t", "train", "2", retry_failed=False)
        assert not store.is_settled("t", "train", "2", retry_failed=True)
        store.append([rationale("1")])
        assert store.is_settled("t", "train", "1", retry_failed=True)
        assert "1" not in store.failures("t", "train")
        with pytest.raises(StoreError, match="already has a rationale"):
            store.append([rationale("1", "again")])
        with pytest.raises(StoreError, match="already has a rationale"):
            store.append([rationale("9"), rationale("9")])
    assert RationaleStore.open_readonly(tmp_path).texts("t", "train") == {"1": "because"}


@pytest.mark.parametrize("tail", [b"0000", b'deadbeef {"type": "rat', b"\n", b"12345678 {}\n"])
def test_torn_last_record_is_dropped_with_a_warning(tmp_path, caplog, tail):
    with RationaleStore.open_for_writing(tmp_path, IDENTITY) as store:
        store.append([rationale("1"), rationale("2")])
    records = tmp_path / "records.jsonl"
    good = records.read_bytes()
    records.write_bytes(good + tail)
    reader = RationaleStore.open_readonly(tmp_path)  # a reader ignores but never repairs
    assert set(reader.texts("t", "train")) == {"1", "2"}
    assert records.read_bytes() == good + tail
    with caplog.at_level(logging.WARNING), RationaleStore.open_for_writing(tmp_path, IDENTITY) as s:
        assert records.read_bytes() == good
        s.append([rationale("3")])
    assert "torn" in caplog.text
    assert set(RationaleStore.open_readonly(tmp_path).texts("t", "train")) == {"1", "2", "3"}


def test_damage_before_valid_records_is_corruption_not_a_torn_tail(tmp_path):
    with RationaleStore.open_for_writing(tmp_path, IDENTITY) as store:
        store.append([rationale("1"), rationale("2"), rationale("3")])
    records = tmp_path / "records.jsonl"
    lines = records.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"because", b"becausf")
    records.write_bytes(b"\n".join(lines))
    with pytest.raises(StoreCorruptError, match=r"records.jsonl:2: .*checksum"):
        RationaleStore.open_for_writing(tmp_path, IDENTITY)


def test_another_identity_is_refused_naming_the_fields(tmp_path):
    with RationaleStore.open_for_writing(tmp_path, IDENTITY) as store:
        store.append([failure("1")])  # any record fixes the identity
    other = dataclasses.replace(IDENTITY, decoding={"temperature": 0.7})
    with pytest.raises(StoreMismatchError, match=r"decoding\.temperature.*new directory"):
        RationaleStore.open_for_writing(tmp_path, other)
    prompt_changed = dataclasses.replace(IDENTITY, ibeta_sha256="ef" * 32)
    with pytest.raises(StoreMismatchError, match="ibeta_sha256"):
        RationaleStore.open_for_writing(tmp_path, prompt_changed)


def test_a_store_without_records_takes_the_corrected_identity(tmp_path):
    """A first run stopped by a configuration error (wrong model name, 401) leaves an identity
    but no record; the corrected run must be able to use the same directory."""
    RationaleStore.open_for_writing(tmp_path, IDENTITY).close()
    fixed = dataclasses.replace(IDENTITY, provider={"kind": "test", "model": "the-right-one"})
    with RationaleStore.open_for_writing(tmp_path, fixed) as store:
        store.append([rationale("1")])
    assert RationaleStore.open_readonly(tmp_path).identity == fixed
    with pytest.raises(StoreMismatchError, match="provider.model"):
        RationaleStore.open_for_writing(tmp_path, IDENTITY)


def _hold_lock(directory, ready, release):
    store = RationaleStore.open_for_writing(directory, IDENTITY)
    ready.set()
    release.wait(30)
    store.close()


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(StoreLockedError, match=rf"pid {holder.pid} "):
            RationaleStore.open_for_writing(tmp_path, IDENTITY)
        RationaleStore.open_readonly(tmp_path)  # readers are never blocked
    finally:
        release.set()
        holder.join(30)
    RationaleStore.open_for_writing(tmp_path, IDENTITY).close()  # free again once it exits


def test_readonly_store_refuses_appends_and_missing_store_is_explained(tmp_path):
    RationaleStore.open_for_writing(tmp_path / "s", IDENTITY).close()
    with pytest.raises(StoreError, match="read-only"):
        RationaleStore.open_readonly(tmp_path / "s").append([rationale("1")])
    with pytest.raises(FileNotFoundError, match="not a rationale store"):
        RationaleStore.open_readonly(tmp_path / "nothing")
