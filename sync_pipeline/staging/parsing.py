"""Parse and validate listed records in a process of their own, beside the sync's.

A full sync that finds most of a large catalogue new or changed parses every record it lists
(`parse_listed`: JSON, validation, canonical text). In the sync's process that work holds the
interpreter lock that fetching the next pages and loading DuckDB need too: a 1M first sync kept
one core busy while it staged, and the other mostly idle. `ParseProcess` hands chunks of the
records' bytes to a child running the same pure function and takes back the rows it made as
Arrow IPC streams, so a record is staged the same either way.

The child is this module run with `-m`: it reads framed requests on stdin and answers each on
stdout, in order, until stdin closes. A sync that dies closes it, so the child ends with it."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import numpy as np
import pyarrow as pa

from ..domain import EntityType
from .records import FETCHED_SCHEMA, parse_listed

_LENGTH = struct.Struct("<Q")
_ANSWER, _ERROR = b"A", b"E"


def _write_frame(out: BinaryIO, *parts: bytes) -> None:
    out.write(_LENGTH.pack(sum(len(part) for part in parts)))
    for part in parts:
        out.write(part)
    out.flush()


def _read_frame(source: BinaryIO) -> bytearray | None:
    """The next frame's bytes, or None when `source` ends before one starts."""
    head = _read_exactly(source, _LENGTH.size)
    return None if head is None else _read_exactly(source, _LENGTH.unpack(head)[0], whole=True)


def _read_exactly(source: BinaryIO, size: int, *, whole: bool = False) -> bytearray | None:
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:
        read = source.readinto(view[got:])
        if not read:
            if got or whole:
                raise EOFError(f"a frame ended after {got} of {size} bytes")
            return None
        got += read
    return data  # not copied again: a chunk's rows are megabytes


class ParseProcess:
    """A child process that runs `parse_listed` on the chunks it is given, one at a time, in
    order (see the module). Use it as a context manager: the child ends with the block."""

    def __init__(self, entity: EntityType):
        # the child imports this package from where this process did, installed or not
        path = os.pathsep.join(entry for entry in sys.path if entry)
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, entity.value], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
        )
        # one thread writes a chunk and reads its rows, without the interpreter lock while it waits
        self._exchange = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parse-apart")

    def __enter__(self) -> ParseProcess:
        return self

    def __exit__(self, error_type, *_) -> None:
        self.close(abandon=error_type is not None)

    def submit(self, raws: Sequence, seqs: Sequence[int], hashes: Sequence[str]) -> Future[pa.Table]:
        """The rows of `parse_listed(entity, raws, seqs, hashes)`, as one Arrow table of FETCHED_SCHEMA.
        `raws`: each record's bytes (or any buffer)."""
        ends = np.cumsum([memoryview(raw).nbytes for raw in raws], dtype=np.int64)
        request = pickle.dumps((b"".join(raws), ends, list(seqs), list(hashes)), protocol=pickle.HIGHEST_PROTOCOL)
        return self._exchange.submit(self._ask, request)

    def _ask(self, request: bytes) -> pa.Table:
        try:
            _write_frame(self._process.stdin, request)
            answer = _read_frame(self._process.stdout)
        except (BrokenPipeError, EOFError):
            answer = None
        if answer is None:
            raise RuntimeError(f"the process parsing listed records ended (exit code {self._process.wait()})")
        if answer[:1] == _ERROR:
            raise pickle.loads(answer[1:])
        with pa.ipc.open_stream(pa.py_buffer(answer)[1:]) as reader:
            return reader.read_all()

    def close(self, *, abandon: bool = False) -> None:
        """Let the child go (it ends when its stdin closes) and wait for it; its chunks not answered
        yet are not waited for. `abandon` (the sync is failing): end the child first, so that it
        neither finishes the chunk it parses nor reads half of one being written to it."""
        self._exchange.shutdown(wait=False, cancel_futures=True)
        if abandon:
            self._process.kill()
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._exchange.shutdown(wait=True)
        self._process.stdout.close()


def serve(entity: EntityType, requests: BinaryIO, answers: BinaryIO) -> None:
    """The child's loop: each request's rows, or the error that parsing it raised."""
    while (request := _read_frame(requests)) is not None:
        try:
            blob, ends, seqs, hashes = pickle.loads(request)
            starts = np.concatenate(([0], ends[:-1])).tolist()
            view = memoryview(blob)
            raws = [view[start:end] for start, end in zip(starts, ends.tolist())]
            table = parse_listed(entity, raws, seqs, hashes).table()
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, FETCHED_SCHEMA) as writer:
                writer.write_table(table)
            _write_frame(answers, _ANSWER, memoryview(sink.getvalue()))
        except Exception as error:  # raised again in the sync, as parsing there would have
            try:
                raised = pickle.dumps(error)
            except Exception:
                raised = pickle.dumps(RuntimeError(f"{type(error).__name__}: {error}"))
            _write_frame(answers, _ERROR, raised)


if __name__ == "__main__":
    # the answers go to the pipe that was stdout; anything else written there goes to stderr
    answering = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(EntityType(sys.argv[1]), sys.stdin.buffer, answering)
