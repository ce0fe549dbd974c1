"""The outage spool: an append-only local file of store records, fsync'd before it counts.

When Postgres cannot take a batch, ``PostgresStore`` appends it here and replays it, in order,
once the database is back (and on the next start after a crash). The file is a sequence of
frames::

    +----------------+----------------+-----------------------------+
    | length: u32 BE | crc32: u32 BE  | payload: one record as JSON |
    +----------------+----------------+-----------------------------+

The CRC covers the length and the payload, so a torn write (the process died mid-append) or a
flipped byte ends the readable prefix: everything before it is kept, the rest is cut off when
the spool is opened. Only an acknowledged append (written and fsync'd) is a promise, and a torn
frame never was one. Corruption in the middle of the file also ends the prefix; there is no way
to trust frame boundaries past a bad frame.

Payloads are stdlib JSON, not orjson: it writes NaN and infinities as themselves, so every float
comes back bit for bit. The spool is off the frame path and only busy during an outage.

All methods are blocking; the store calls them through ``asyncio.to_thread``. One process owns a
spool at a time (an exclusive ``flock``): two relays replaying one file would write each record
twice as often as needed and could clear records the other has not written yet.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from relay.errors import SpoolError
from relay.store import Record, RecordMatch, record_from_dict, record_to_dict

log = logging.getLogger("relay.spool")

_HEADER = struct.Struct(">II")
# A frame longer than this is a corrupt length field, not a record: records are a few KiB.
MAX_PAYLOAD = 16 * 1024 * 1024


def encode(record: Record) -> bytes:
    """One framed record: header and JSON payload."""
    payload = json.dumps(record_to_dict(record), separators=(",", ":")).encode()
    length = len(payload).to_bytes(4, "big")
    return _HEADER.pack(len(payload), zlib.crc32(payload, zlib.crc32(length))) + payload


def decode(payload: bytes) -> Record:
    """The record in a frame's payload (already checked against its CRC)."""
    return record_from_dict(json.loads(payload))


class Spool:
    """An append-only, checksummed file of records, owned by one process at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._size = 0
        # The store serialises calls with an asyncio lock; this one guards the descriptor against
        # a worker thread still running after its awaiting task was cancelled (close vs read).
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r}, size={self._size})"

    @property
    def size(self) -> int:
        """Bytes of good frames in the file (0 when everything has been written out)."""
        return self._size

    def open(self) -> int:
        """Open (or create) the file, lock it, and cut off a torn or corrupt tail.

        Returns:
            The number of bytes dropped from the tail (0 for a clean file).

        Raises:
            SpoolError: another process has this spool open.
            OSError: the file cannot be created or read.
        """
        with self._lock:
            if self._fd is not None:
                return 0
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SpoolError(f"spool {self.path} is in use by another process") from None
            if created:
                _fsync_dir(self.path.parent)  # the new name must survive a crash too
            self._fd = fd
            total = os.fstat(fd).st_size
            good = 0
            for _, end in self._frames(0, None, total):
                good = end
            if good < total:
                log.warning("spool %s: dropping %d byte(s) of torn or corrupt tail", self.path, total - good)
                os.ftruncate(fd, good)
                os.fsync(fd)
            self._size = good
            return total - good

    def append(self, records: Iterable[Record]) -> None:
        """Append ``records`` in one write and fsync; when this returns they survive a crash.

        A failed write is rolled back to the previous end, so the file never keeps half a batch
        that later appends would be stranded behind.
        """
        data = b"".join(encode(r) for r in records)
        with self._lock:
            fd = self._require_open()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, self._size)
                raise
            self._size += len(data)

    def read(self, offset: int = 0, limit: int | None = None) -> tuple[list[Record], int]:
        """Records from ``offset`` on (at most ``limit``), in order, and the offset after them."""
        with self._lock:
            self._require_open()
            records: list[Record] = []
            end = offset
            for record, after in self._frames(offset, limit, self._size):
                records.append(record)
                end = after
            return records, end

    def remove(self, drop: RecordMatch, at: int) -> tuple[int, int]:
        """Rewrite the spool without the records ``drop`` picks (widened with the spool's own
        records, ``RecordMatch.widened``): a new file, fsync'd, locked, renamed over this one.
        ``at`` is an offset into the old file (where replay has got to).

        Returns:
            How many records went, and ``at`` in the new file.
        """
        with self._lock:
            fd = self._require_open()
            frames = list(self._frames(0, None, self._size))
            drop = drop.widened([record for record, _ in frames])
            kept, start, removed, moved = [], 0, 0, at
            for record, end in frames:
                if drop(record):
                    removed += 1
                    if end <= at:
                        moved -= end - start
                else:
                    kept.append(record)
                start = end
            if not removed:
                return 0, at
            fresh = self.path.with_name(f".{self.path.name}.erasing")
            new_fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                data = b"".join(encode(r) for r in kept)
                view = memoryview(data)
                while view:
                    view = view[os.write(new_fd, view) :]
                os.fsync(new_fd)
                os.replace(fresh, self.path)
                _fsync_dir(self.path.parent)
            except BaseException:
                os.close(new_fd)
                raise
            self._fd, self._size = new_fd, len(data)
            os.close(fd)  # (the old file's lock goes with it; the new one is held already)
            return removed, moved

    def clear(self) -> None:
        """Empty the spool once everything in it is in the database."""
        with self._lock:
            fd = self._require_open()
            os.ftruncate(fd, 0)
            os.fsync(fd)
            self._size = 0

    def close(self) -> None:
        """Release the file and its lock; the records in it stay for the next open."""
        with self._lock:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)  # also drops the flock

    def _require_open(self) -> int:
        if self._fd is None:
            raise SpoolError(f"spool {self.path} is not open")
        return self._fd

    def _frames(self, offset: int, limit: int | None, end: int) -> Iterator[tuple[Record, int]]:
        """Good frames from ``offset``: (record, offset after it); stops at the first bad one."""
        assert self._fd is not None
        count = 0
        while offset + _HEADER.size <= end and (limit is None or count < limit):
            length, crc = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
            stop = offset + _HEADER.size + length
            if length > MAX_PAYLOAD or stop > end:
                return
            payload = os.pread(self._fd, length, offset + _HEADER.size)
            if zlib.crc32(payload, zlib.crc32(length.to_bytes(4, "big"))) != crc:
                return
            try:
                record = decode(payload)
            except (ValueError, TypeError, KeyError):
                return  # a checksum collision on garbage: still not a record
            yield record, stop
            offset = stop
            count += 1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
