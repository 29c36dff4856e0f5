"""Streaming safetensors I/O with strict validation.

Why not `safetensors.numpy`: it has no bfloat16 and loads whole files; the converter must read one
tensor (or one expert) at a time with bounded memory, and must turn a truncated or corrupt file into a
one-line error rather than a crash. bf16 tensors are carried as raw uint16 words.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from mlx_oss.errors import ConvertError

# safetensors dtype tag -> numpy dtype used to hold the raw bytes
NP_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "BOOL": np.dtype("?"),
}

MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors tag, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def nbytes_of(dtype: str, shape: Iterable[int]) -> int:
    n = NP_DTYPES[dtype].itemsize
    for s in shape:
        n *= int(s)
    return n


def _whole(v) -> int:
    """A header's dimension or offset: a JSON integer >= 0 (int() would read 2.7 as 2 and true as 1)."""
    if type(v) is not int or v < 0:
        raise ValueError(f"{v!r} is not a whole number")
    return v


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Parse and validate a safetensors header; every offset must fit the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConvertError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER_BYTES or 8 + hlen > size:
                raise ConvertError(
                    f"{path}: corrupt safetensors header (declares {hlen} header bytes, file has {size})"
                )
            raw = f.read(hlen)
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except RecursionError:
        raise ConvertError(f"{path}: corrupt safetensors header (JSON nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConvertError(f"{path}: corrupt safetensors header ({e})") from None
    meta = header.pop("__metadata__", None) or {}
    base = 8 + hlen
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(_whole(s) for s in entry["shape"])
            start, end = (_whole(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConvertError(f"{path}: corrupt safetensors header entry for tensor {name}") from None
        if dtype not in NP_DTYPES:
            raise ConvertError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        if end - start != nbytes_of(dtype, shape) or start < 0:
            raise ConvertError(f"{path}: tensor {name} byte range does not match shape {list(shape)} {dtype}")
        if base + end > size:
            raise ConvertError(
                f"{path}: truncated (tensor {name} ends at byte {base + end}, file has {size} bytes)"
            )
        infos[name] = TensorInfo(name, dtype, shape, base + start, base + end)
    return infos, meta


def read_tensor(path: Path, info: TensorInfo, rows: slice | None = None) -> np.ndarray:
    """Read a tensor (or a range of its leading axis) with a positioned read.

    Positioned reads instead of mmap: mapped pages count towards RSS, and the converter promises a
    peak RSS that does not grow with the checkpoint.
    """
    dt = NP_DTYPES[info.dtype]
    shape = info.shape
    start, count = info.start, info.nbytes
    if rows is not None:
        row_bytes = nbytes_of(info.dtype, shape[1:])
        r0, r1, _ = rows.indices(shape[0])
        start += r0 * row_bytes
        count = (r1 - r0) * row_bytes
        shape = (r1 - r0, *shape[1:])
    buf = np.empty(count, np.uint8)  # not bytearray: that would zero-fill first
    view = memoryview(buf)
    got = 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while got < count:
            n = f.readinto(view[got:])
            if not n:
                raise ConvertError(f"{path}: truncated while reading tensor {info.name}")
            got += n
    return buf.view(dt).reshape(shape)


class StreamingWriter:
    """Writes one safetensors file whose tensor list is known up front, data streamed in order.

    The file writes run on a background thread (bounded queue) while the caller reads and repacks the
    next chunk, and the sha256 for the manifest is computed on the way, so the converter is limited by
    the disk rather than by reading + hashing + writing one after another.
    """

    QUEUE_CHUNKS = 4  # bounds memory: at most this many chunks wait for the disk

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None = None):
        self.path = Path(path)
        header: dict = {}
        if metadata:
            header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
        off = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in entries:
            n = nbytes_of(dtype, shape)
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
            self._order.append((name, n))
            off += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # 8-byte alignment of the data section, as safetensors does
        self._f: BinaryIO = open(self.path, "wb")
        self.sha256 = hashlib.sha256()
        self._idx = 0
        self._left = self._order[0][1] if self._order else 0
        self.total_bytes = 8 + len(raw) + off
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(self.QUEUE_CHUNKS)
        self._thread = threading.Thread(target=self._drain, name=f"write {self.path.name}", daemon=True)
        self._thread.start()
        self._send(struct.pack("<Q", len(raw)) + raw)

    def _put(self, data) -> None:
        self._f.write(data)

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._put(data)
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def _send(self, data) -> None:
        if self._error is not None:
            raise self._error
        self.sha256.update(data)
        self._queue.put(data)

    def write(self, name: str, chunk: np.ndarray) -> int:
        """Append (part of) tensor `name`; chunks must arrive in header order."""
        expected = self._order[self._idx][0] if self._idx < len(self._order) else None
        if name != expected:
            raise RuntimeError(f"{self.path}: wrote {name}, expected {expected}")
        data = np.ascontiguousarray(chunk).view(np.uint8).reshape(-1)
        if data.nbytes > self._left:
            raise RuntimeError(f"{self.path}: too many bytes for tensor {name}")
        self._send(memoryview(data))
        self._left -= data.nbytes
        if self._left == 0:
            self._idx += 1
            self._left = self._order[self._idx][1] if self._idx < len(self._order) else 0
        return data.nbytes

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def close(self) -> str:
        """Finish the file (flushed and fsynced); returns its sha256 hex digest."""
        self._stop()
        try:
            if self._error is not None:
                raise self._error
            if self._idx != len(self._order):
                raise RuntimeError(f"{self.path}: closed before tensor {self._order[self._idx][0]} was written")
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()
        return self.sha256.hexdigest()

    def abort(self) -> None:
        self._stop()
        self._f.close()


def write_file(path: Path, tensors: dict[str, tuple[str, np.ndarray]], metadata: dict | None = None) -> str:
    """Write small in-memory tensors {name: (dtype tag, array)} in one go."""
    w = StreamingWriter(path, [(n, d, tuple(a.shape)) for n, (d, a) in tensors.items()], metadata)
    for n, (_, a) in tensors.items():
        w.write(n, a)
    return w.close()
