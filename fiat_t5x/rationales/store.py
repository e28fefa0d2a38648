"""The rationale store: β's rationales keyed by (task, split, example id), append-only, crash-safe.

On disk a store is a directory:

  identity.json   what produced the rationales: provider identity (no secrets, no hosts),
                  decoding settings and the sha256 of Iβ, plus the sha256 of all three. Fixed
                  by the first record: a job with a different identity is refused, so rationales
                  of two βs or two prompts never mix silently. While the store holds no record
                  (a first run stopped by a configuration error), a corrected job replaces it.
  records.jsonl   one record per line, framed as `<crc32 of the JSON, 8 hex digits> <JSON>\\n`.
                  Records are appended and never rewritten; each append is flushed and fsynced.
                  A torn or garbled tail (a crash mid-write) is detected by the frame and cut off
                  when a writer opens the store; a bad record *followed by good ones* is real
                  corruption and raises.
  lock            flock'ed by the single writer, holding its pid and host for error messages.
  job.json        the last job's settings (never secrets), for people reading the store.

Two record types: "rationale" (the text and its provenance) and "failure" (why there is no text;
`permanent` failures are skipped on resume, exhausted transient ones are retried). A key has at
most one rationale record; once it has one, it is done forever.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import socket
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fiat_t5x import storage
from fiat_t5x.training.gin_cli import UsageError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
IDENTITY_FILE = "identity.json"
RECORDS_FILE = "records.jsonl"
LOCK_FILE = "lock"
JOB_FILE = "job.json"

Key = tuple[str, str, str]  # (task, split, example id)


class StoreError(UsageError):
    """Base of the store's errors: each message names the store and what to do (one line)."""


class StoreMismatchError(StoreError, ValueError):
    """The store was made by another β, decoding or Iβ than the job at hand."""


class StoreLockedError(StoreError, RuntimeError):
    """Another process holds the store's write lock."""


class StoreCorruptError(StoreError, ValueError):
    """A record in the middle of records.jsonl fails its checksum or does not parse."""


def canonical_json(value: Any) -> str:
    """Stable JSON for hashing: sorted keys, no whitespace, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_of(value: Any) -> str:
    """sha256 hex of a string, or of the canonical JSON of anything else."""
    text = value if isinstance(value, str) else canonical_json(value)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class StoreIdentity:
    """What makes two rationales interchangeable: β, its decoding and the prompt Iβ.

    Attributes:
      provider: `Provider.identity()`: kind and model name (never keys, never hosts).
      decoding: `Provider.decoding()`: temperature, max tokens, stop sequences, ...
      ibeta_sha256: `PromptSpec.sha256` of the task's Iβ (instruction, exemplars, formatting).
    """

    provider: dict[str, Any]
    decoding: dict[str, Any]
    ibeta_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "decoding": self.decoding,
            "ibeta_sha256": self.ibeta_sha256,
        }

    @property
    def sha256(self) -> str:
        return sha256_of(self.to_json())

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StoreIdentity:
        return cls(data["provider"], data["decoding"], data["ibeta_sha256"])

    def differences(self, other: StoreIdentity) -> list[str]:
        """Dotted paths of the fields that differ, e.g. ['decoding.temperature']."""
        return sorted(_diff(self.to_json(), other.to_json(), ""))


def _diff(a: Any, b: Any, prefix: str) -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


@dataclasses.dataclass(frozen=True)
class RationaleRecord:
    """β's rationale for one example, with its provenance."""

    task: str
    split: str
    example_id: str
    text: str
    provider: str
    model: str
    ibeta_sha256: str
    prompt_sha256: str
    decoding: dict[str, Any]
    time: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    attempts: int = 1
    type: str = dataclasses.field(default="rationale", init=False)

    @property
    def key(self) -> Key:
        return (self.task, self.split, self.example_id)


@dataclasses.dataclass(frozen=True)
class FailureRecord:
    """Why an example has no rationale (yet). `permanent` ones are not retried on resume."""

    task: str
    split: str
    example_id: str
    kind: str
    message: str
    permanent: bool
    provider: str
    model: str
    ibeta_sha256: str
    time: str
    attempts: int = 1
    type: str = dataclasses.field(default="failure", init=False)

    @property
    def key(self) -> Key:
        return (self.task, self.split, self.example_id)


Record = RationaleRecord | FailureRecord
_RECORD_TYPES = {"rationale": RationaleRecord, "failure": FailureRecord}


def encode_record(record: Record) -> bytes:
    """One framed line: `<crc32 hex> <json>\\n`."""
    payload = canonical_json(dataclasses.asdict(record)).encode("utf-8")
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode_record(line: bytes) -> Record:
    """Parses one framed line (without its newline); raises ValueError when it does not check."""
    if len(line) < 10 or line[8:9] != b" ":
        raise ValueError("no checksum frame")
    payload = line[9:]
    if int(line[:8], 16) != zlib.crc32(payload):
        raise ValueError("checksum mismatch")
    data = json.loads(payload)
    cls = _RECORD_TYPES.get(data.pop("type", None))
    if cls is None:
        raise ValueError("unknown record type")
    return cls(**data)


@dataclasses.dataclass
class _Scan:
    records: list[Record]
    good_bytes: int  # length of the valid prefix
    total_bytes: int


def _scan(path: str | os.PathLike) -> _Scan:
    try:
        data = storage.read_bytes(os.fspath(path))
    except FileNotFoundError:
        data = b""
    records: list[Record] = []
    offset = good = 0
    bad_line: int | None = None
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        end = offset + len(line) + 1
        complete = end <= len(data)
        if not line and not complete:
            break  # the empty remainder after the final newline
        try:
            if not complete:
                raise ValueError("no newline: torn write")
            record = decode_record(line)
        except (ValueError, TypeError) as e:
            if bad_line is None:
                bad_line = lineno
                bad_reason = str(e)
        else:
            if bad_line is not None:
                raise StoreCorruptError(
                    f"{path}:{bad_line}: record fails to decode ({bad_reason}) but valid records "
                    f"follow it (line {lineno}); this is not a torn write. Move the file aside and "
                    "regenerate, or remove the bad line by hand if you know why it is there."
                )
            records.append(record)
            good = end
        offset = end
    return _Scan(records, good, len(data))


class RationaleStore:
    """An opened store. Writers use `open_for_writing`, readers (SeqIO tasks) `open_readonly`.

    Lookups are dictionary reads on an index built at open time, so joining rationales onto a task
    split is `store.texts(task, split)[example_id]`.
    """

    def __init__(
        self, directory: pathlib.Path | str, identity: StoreIdentity, records: list[Record]
    ):
        self.directory = directory
        self.identity = identity
        self._rationales: dict[tuple[str, str], dict[str, RationaleRecord]] = {}
        self._failures: dict[tuple[str, str], dict[str, FailureRecord]] = {}
        self._file = None
        self._lock_fd: int | None = None
        self.fsync = True
        for record in records:
            self._index(record)

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open_for_writing(
        cls, directory: str | os.PathLike, identity: StoreIdentity, *, fsync: bool = True
    ) -> RationaleStore:
        """Creates or reopens a store for appending; takes the lock and cuts off a torn tail.

        Raises StoreLockedError when another process writes it, StoreMismatchError when its
        records were made with another identity, StoreCorruptError when a record in the middle
        is damaged. A store without records takes the new identity (nothing can mix).
        """
        if storage.is_url(os.fspath(directory)):
            raise StoreError(
                f"{os.fspath(directory)}: a rationale store is written on local disk (it appends "
                "and locks); generate into a local directory, then copy it to the bucket for "
                "training to read"
            )
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = _acquire_lock(directory)
        try:
            identity_path = directory / IDENTITY_FILE
            records_path = directory / RECORDS_FILE
            scan = _scan(records_path)
            existing = _read_identity(identity_path) if identity_path.exists() else None
            if existing is not None and existing.sha256 != identity.sha256 and not scan.records:
                logger.info(
                    "%s holds no record yet; its identity %s is replaced by this job's %s",
                    directory,
                    existing.sha256[:12],
                    identity.sha256[:12],
                )
                existing = None
            if existing is not None:
                if existing.sha256 != identity.sha256:
                    fields = ", ".join(existing.differences(identity))
                    raise StoreMismatchError(
                        f"{directory} holds rationales from another β/Iβ setup (differs in: "
                        f"{fields}; store identity {existing.sha256[:12]}, this job "
                        f"{identity.sha256[:12]}). Point RATIONALE_STORE (--store) at a new "
                        "directory instead of mixing rationales."
                    )
            else:
                _write_atomically(
                    identity_path,
                    json.dumps(
                        {
                            "format_version": FORMAT_VERSION,
                            "sha256": identity.sha256,
                            **identity.to_json(),
                        },
                        indent=2,
                        sort_keys=True,
                    ),
                )
            if scan.good_bytes < scan.total_bytes:
                logger.warning(
                    "%s: dropping a torn last record (%d bytes after byte %d); the example it "
                    "belonged to will be generated again",
                    records_path,
                    scan.total_bytes - scan.good_bytes,
                    scan.good_bytes,
                )
                with open(records_path, "r+b") as f:
                    f.truncate(scan.good_bytes)
                    f.flush()
                    os.fsync(f.fileno())
            store = cls(directory, identity, scan.records)
            store.fsync = fsync
            store._file = open(records_path, "ab")  # noqa: SIM115 - closed in close()
            store._lock_fd = lock_fd
            _fsync_dir(directory)
            return store
        except BaseException:
            os.close(lock_fd)
            raise

    @classmethod
    def open_readonly(cls, directory: str | os.PathLike) -> RationaleStore:
        """Opens a store for reading; never locks or repairs. A torn tail is ignored with a warning
        (it may be a record a live writer is in the middle of).

        The directory may be a bucket URL (`gs://...`): every host of a pod reads the one copy
        (`fiat_t5x.storage`). Stores are written on local disk (`open_for_writing`).
        """
        where = os.fspath(directory)
        try:
            identity = _read_identity(storage.join(where, IDENTITY_FILE))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{where} is not a rationale store (no {IDENTITY_FILE}); generate one with "
                "`fiat-t5x rationales generate --store DIR ...`"
            ) from None
        records_path = storage.join(where, RECORDS_FILE)
        scan = _scan(records_path)
        if scan.good_bytes < scan.total_bytes:
            logger.warning(
                "%s: ignoring %d bytes of an incomplete last record",
                records_path,
                scan.total_bytes - scan.good_bytes,
            )
        opened = where if storage.is_url(where) else pathlib.Path(where)
        return cls(opened, identity, scan.records)

    @staticmethod
    def is_store(directory: str | os.PathLike) -> bool:
        """Whether `directory` (local or a bucket URL) holds a store."""
        return storage.is_file(storage.join(os.fspath(directory), IDENTITY_FILE))

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> RationaleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------

    def _index(self, record: Record) -> None:
        task_split = (record.task, record.split)
        if isinstance(record, RationaleRecord):
            done = self._rationales.setdefault(task_split, {})
            if record.example_id in done:
                logger.warning("%s: second rationale for %s ignored", self.directory, record.key)
                return
            done[record.example_id] = record
            self._failures.get(task_split, {}).pop(record.example_id, None)
        else:
            if record.example_id in self._rationales.get(task_split, {}):
                return
            self._failures.setdefault(task_split, {})[record.example_id] = record

    def rationale(self, task: str, split: str, example_id: str) -> RationaleRecord | None:
        return self._rationales.get((task, split), {}).get(example_id)

    def rationales(self, task: str, split: str) -> dict[str, RationaleRecord]:
        """example id -> record, for one task split (a copy: safe to keep)."""
        return dict(self._rationales.get((task, split), {}))

    def texts(self, task: str, split: str) -> dict[str, str]:
        """example id -> rationale text: what a rationale-injecting task joins on."""
        return {i: r.text for i, r in self._rationales.get((task, split), {}).items()}

    def failures(self, task: str, split: str) -> dict[str, FailureRecord]:
        """example id -> latest failure, for ids that have no rationale."""
        return dict(self._failures.get((task, split), {}))

    def task_splits(self) -> list[tuple[str, str]]:
        return sorted(set(self._rationales) | set(self._failures))

    def is_settled(self, task: str, split: str, example_id: str, *, retry_failed: bool) -> bool:
        """True when a job should not ask β again: a rationale, or a permanent failure (unless
        `retry_failed`)."""
        if example_id in self._rationales.get((task, split), {}):
            return True
        failure = self._failures.get((task, split), {}).get(example_id)
        return failure is not None and failure.permanent and not retry_failed

    def iter_records(self) -> Iterator[Record]:
        """Current state, one record per key: rationales, then unsettled failures."""
        for by_id in self._rationales.values():
            yield from by_id.values()
        for by_id in self._failures.values():
            yield from by_id.values()

    # --- writing ---------------------------------------------------------------------------------

    def append(self, records: Sequence[Record] | Iterable[Record]) -> None:
        """Appends records with one write, flush and fsync; refuses a second rationale for a key."""
        if self._file is None:
            raise StoreError(f"{self.directory} was opened read-only or is closed; cannot append")
        records = list(records)
        seen: set[Key] = set()
        for record in records:
            if isinstance(record, RationaleRecord):
                if self.rationale(*record.key) is not None or record.key in seen:
                    raise StoreError(
                        f"{self.directory}: {record.key} already has a rationale; a store keeps "
                        "exactly one per example"
                    )
                seen.add(record.key)
        self._file.write(b"".join(encode_record(r) for r in records))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        for record in records:
            self._index(record)

    def write_job_config(self, config: dict[str, Any]) -> None:
        """Saves the job's settings (the caller passes no secrets) next to the records."""
        _write_atomically(
            self.directory / JOB_FILE, json.dumps(config, indent=2, sort_keys=True, default=str)
        )


def _read_identity(path: str | os.PathLike) -> StoreIdentity:
    try:
        data = json.loads(storage.read_text(os.fspath(path)))
        return StoreIdentity.from_json(data)
    except (ValueError, KeyError) as e:
        raise StoreCorruptError(f"{path}: not a valid store identity ({e!r})") from e


def _acquire_lock(directory: pathlib.Path) -> int:
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "a process (pid unknown)"
        raise StoreLockedError(
            f"{directory} is being written by another job ({who}); wait for it to finish, stop "
            "it, or point this job at another --store directory"
        ) from e
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _write_atomically(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
