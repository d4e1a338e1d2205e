"""Reading one source file within `[limits]`: every bound is checked before the cost it
guards against is paid, so an oversize file, a compression bomb, a file a million columns
wide or a single 1 GB line is quarantined with a one-line reason while memory stays flat.

- size: from the listing, before a byte is read; while reading, in chunks (a listing
  may not know the size);
- gzip / zstd: decompressed in a streaming pass that keeps nothing (pyarrow's codecs),
  stopped at the bound; only a file within it is decompressed for parsing;
- CSV lines and header width: counted in the same pass, chunk by chunk;
- Parquet: columns and uncompressed size from the footer, before any page is decoded;
- entities: counted on the parsed frame (cheap next to parsing it).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.config import DatasetConfig, LimitsConfig

CHUNK = 8 << 20  # bytes read or decompressed at a time
CODECS = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd"}  # magic bytes -> pyarrow codec


class OverLimit(ValueError):
    """A file past a `[limits]` bound; the message is the one-line quarantine reason."""

    def __init__(self, name: str, bound: str, value: int, found: str) -> None:
        super().__init__(f"{name}: file failed bound 'limits.{bound} = {value}' ({found})")


def codec_of(data: bytes) -> str | None:
    """The compression of a file's bytes by their magic number (None: not compressed)."""
    return next((c for magic, c in CODECS.items() if data.startswith(magic)), None)


def check_listed_size(limits: LimitsConfig, name: str, size: int | None) -> None:
    if size is not None and size > limits.file_bytes:
        raise OverLimit(name, "file_bytes", limits.file_bytes, f"{size} bytes listed")


def fetch_bounded(cfg: DatasetConfig, url: str, name: str) -> bytes:
    """The raw bytes of one source file, read in chunks and refused past `file_bytes`.

    The first read asks for the size the file reports (within the bound): a file that has
    not grown since comes back in one piece, not copied again to join chunks (a tenth of
    a second on a day's 200 MB CSV)."""
    bound = cfg.limits.file_bytes
    parts, total = [], 0
    with fsspec.open(url, "rb", **cfg.source.storage_options) as fh:
        want = max(CHUNK, getattr(fh, "size", None) or 0)
        while chunk := fh.read(min(want, bound + 1 - total)):
            want = CHUNK
            parts.append(chunk)
            total += len(chunk)
            if total > bound:
                raise OverLimit(name, "file_bytes", bound, f"more than {bound} bytes read")
    return b"".join(parts)


def _decompressed_chunks(data: bytes, codec: str) -> Iterator[bytes]:
    stream = pa.CompressedInputStream(pa.BufferReader(data), codec)
    while chunk := stream.read(CHUNK):
        yield chunk


class _CsvShape:
    """Longest line and header width of a CSV seen chunk by chunk (nothing kept but the
    header's first line)."""

    def __init__(self, limits: LimitsConfig, name: str) -> None:
        self.limits, self.name = limits, name
        self.line = 0  # bytes of the line still open at the end of the last chunk
        self.header: bytes | None = None
        self.head = b""

    def feed(self, chunk: bytes) -> None:
        first = chunk.find(b"\n")
        if self.header is None:
            self.head += chunk[: first if first >= 0 else len(chunk)]
            if first >= 0:
                self.header = self.head
        if first >= 0:
            last = chunk.rfind(b"\n")
            longest = max(self.line + first, self._longest_between(chunk, first, last))
            self.line = len(chunk) - last - 1
        else:
            longest = self.line = self.line + len(chunk)
        if max(longest, self.line) > self.limits.line_bytes:
            raise OverLimit(self.name, "line_bytes", self.limits.line_bytes,
                            f"a line of more than {self.limits.line_bytes} bytes")

    def _longest_between(self, chunk: bytes, first: int, last: int) -> int:
        """The longest line between a chunk's first and last newline, wherever it could pass
        the bound (else 0). A line past the bound holds a whole window of half the bound
        with no newline: one `find` per window (it stops at the window's first newline, a
        line's length in), and only a window without one has its line measured. At the
        default 1 MiB bound a 200 MB day takes ~0.03 s (numpy's scan of every byte took
        0.07 s); a bound of a few hundred bytes makes the windows, and the loop, long."""
        window = max(1, (self.limits.line_bytes + 1) // 2)
        longest = 0
        for start in range(first + 1, last, window):
            if chunk.find(b"\n", start, min(start + window, last)) < 0:
                before, after = chunk.rfind(b"\n", 0, start), chunk.find(b"\n", start)
                longest = max(longest, after - before - 1)
        return longest

    def done(self) -> None:
        header = self.header if self.header is not None else self.head
        try:  # polars' own CSV reader, so quoting counts as the parser will count it
            width = pl.read_csv(io.BytesIO(header), n_rows=0, infer_schema_length=0).width
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError):
            return  # not a table: the reader names the problem
        if width > self.limits.columns:
            raise OverLimit(self.name, "columns", self.limits.columns, f"{width} columns in the header")


def checked_csv(limits: LimitsConfig, data: bytes, name: str) -> bytes:
    """CSV bytes ready to parse (decompressed when gzip / zstd), after a streaming pass that
    checks decompressed size, line length and header width without keeping the content."""
    codec = codec_of(data)
    shape = _CsvShape(limits, name)
    total = 0
    try:
        chunks = _decompressed_chunks(data, codec) if codec else iter([data])  # no copy
        for chunk in chunks:
            total += len(chunk)
            if codec and total > limits.decompressed_bytes:
                raise OverLimit(name, "decompressed_bytes", limits.decompressed_bytes,
                                f"{codec} expands past it")
            shape.feed(chunk)
    except (OSError, pa.ArrowException) as err:  # a broken stream: not a table
        raise ValueError(f"{name}: unreadable {codec} stream ({str(err).splitlines()[0][:200]})") \
            from None
    shape.done()
    if not codec:
        return data
    return b"".join(_decompressed_chunks(data, codec))


def check_parquet(limits: LimitsConfig, data: bytes, name: str) -> None:
    """Columns and uncompressed size from the footer, before any page is decoded (a footer
    that does not parse is left to the reader, which names the problem)."""
    try:
        meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    except (OSError, pa.ArrowException):
        return
    if meta.num_columns > limits.columns:
        raise OverLimit(name, "columns", limits.columns, f"{meta.num_columns} columns in the schema")
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > limits.decompressed_bytes:
        raise OverLimit(name, "decompressed_bytes", limits.decompressed_bytes,
                        f"{size} bytes uncompressed per its metadata")


def check_entities(cfg: DatasetConfig, frame: pl.DataFrame, name: str) -> None:
    column = cfg.columns.entity
    if column and column in frame.columns:
        found = frame.get_column(column).n_unique()
        if found > cfg.limits.entities_per_batch:
            raise OverLimit(name, "entities_per_batch", cfg.limits.entities_per_batch,
                            f"{found} distinct entities")
