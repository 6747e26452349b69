"""Decode a text file of any size piece by piece.

One pass over the bytes finds the encoding (a BOM, valid UTF-8, clean Western text, else
charset-normalizer's guess) and the file's hash; a second pass decodes the bytes a megabyte at a
time. So a 50 MB single-line file is never one string: reading it takes the memory a small file
takes. The same rules decode in-memory bytes (HTML) through `decode_bytes`.
"""
from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

READ_BYTES = 1 << 20  # bytes per read, and so at most this many characters per decoded piece
DETECT_BYTES = 4 << 20  # the head of the file charset-normalizer sees (it samples far less itself)

BOMS = (
    # UTF-32 first: its little-endian BOM starts with the UTF-16 one.
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_UTF8_BOM = b"\xef\xbb\xbf"
_CP1252_HOLES = re.compile(rb"[\x81\x8d\x8f\x90\x9d]")  # the five bytes cp1252 leaves undefined
_WESTERN_SAMPLE = 16_000  # bytes (= characters in cp1252) per slice of the Western-text check


class NotText(ValueError):
    """NUL bytes and no BOM: a binary file."""


@dataclass(frozen=True)
class TextEncoding:
    codec: str
    errors: str = "strict"
    skip: int = 0  # leading bytes the codec must not see (the BOM of a UTF-8 file with bad bytes)


@dataclass(frozen=True)
class ScannedBytes:
    encoding: TextEncoding
    size: int
    sha256: str


def scan(chunks: Iterable[bytes], read_at: Callable[[int, int], bytes]) -> ScannedBytes:
    """Size, hash and encoding of the bytes `chunks` yields (in order); `read_at(offset, n)` reads
    samples. Raises NotText for binary data."""
    digest = hashlib.sha256()
    size = 0
    head = bytearray()
    has_nul = False
    cp1252_ok = True
    utf8 = codecs.getincrementaldecoder("utf-8")("strict")
    utf8_ok = True
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        if len(head) < DETECT_BYTES:
            head += chunk[: DETECT_BYTES - len(head)]
        has_nul = has_nul or b"\x00" in chunk
        cp1252_ok = cp1252_ok and _CP1252_HOLES.search(chunk) is None
        if utf8_ok:
            try:
                utf8.decode(chunk)
            except UnicodeDecodeError:
                utf8_ok = False
    if utf8_ok:
        try:
            utf8.decode(b"", final=True)  # a multi-byte character cut off at the end
        except UnicodeDecodeError:
            utf8_ok = False
    encoding = _choose(bytes(head), size, has_nul, utf8_ok, cp1252_ok, read_at)
    return ScannedBytes(encoding, size, digest.hexdigest())


def _choose(head: bytes, size: int, has_nul: bool, utf8_ok: bool, cp1252_ok: bool,
            read_at: Callable[[int, int], bytes]) -> TextEncoding:
    for bom, codec in BOMS:
        if head.startswith(bom):
            # The BOM is strong evidence; replace the odd broken unit rather than reject the file.
            return TextEncoding(codec, "replace")
    if has_nul:
        raise NotText("binary file (NUL bytes)")
    if utf8_ok:
        return TextEncoding("utf-8-sig")
    if head.startswith(_UTF8_BOM):
        return TextEncoding("utf-8", "replace", skip=len(_UTF8_BOM))
    if cp1252_ok and _reads_as_western(_western_sample(size, read_at)):
        return TextEncoding("cp1252")
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(head).best()
        if best is not None:
            # It saw the head only: a later byte its codec cannot decode becomes U+FFFD.
            return TextEncoding(best.encoding, "replace")
    except Exception:  # detection is best effort; the fallbacks below always decode
        pass
    return TextEncoding("cp1252") if cp1252_ok else TextEncoding("latin-1")


def _western_sample(size: int, read_at: Callable[[int, int], bytes]) -> str:
    """Three slices are enough evidence and keep big files fast (cp1252: one byte per character)."""
    if size <= 3 * _WESTERN_SAMPLE:
        return read_at(0, size).decode("cp1252")
    starts = (0, size // 2, size - _WESTERN_SAMPLE)
    return "".join(read_at(start, _WESTERN_SAMPLE).decode("cp1252") for start in starts)


def _reads_as_western(sample: str) -> bool:
    """Whether cp1252 reads `sample` as clean Latin text.

    charset-normalizer often ranks cp1250/cp1257/utf_16_be above cp1252 for short French or
    German text ("crème" -> "crčme"), so a plausible cp1252 reading wins. Cyrillic, Greek and
    other single-byte scripts read as cp1252 are nearly all high-byte letters and noisy, so they
    fail these checks and go to charset-normalizer.
    """
    letters = [c for c in sample if c.isalpha()]
    if not letters:
        return False
    high = sum(1 for c in letters if ord(c) > 127)
    if high / len(letters) > 0.4:
        return False
    try:
        from charset_normalizer.md import mess_ratio
    except ImportError:  # internal module: if it moves, fall back to the detector's own ranking
        return False
    return mess_ratio(sample, 0.2) <= 0.1


def decoded_pieces(chunks: Iterable[bytes], encoding: TextEncoding) -> Iterator[str]:
    """The text of `chunks`, newlines normalised to \\n and leading BOMs dropped, a piece per chunk."""
    # "replace" even for a validated codec: the file may change between the scan and this pass.
    decoder = codecs.getincrementaldecoder(encoding.codec)("replace")
    skip = encoding.skip
    carry = ""  # a trailing \r waits for the next piece: it may be half of a \r\n
    at_start = True
    for chunk in _skipping(chunks, skip):
        text = carry + decoder.decode(chunk)
        carry = "\r" if text.endswith("\r") else ""
        text = text[: len(text) - len(carry)]
        if at_start:
            text = text.lstrip("\ufeff")
            at_start = not text
        if text:
            yield normalise_newlines(text)
    text = carry + decoder.decode(b"", final=True)
    if at_start:
        text = text.lstrip("\ufeff")
    if text:
        yield normalise_newlines(text)


def _skipping(chunks: Iterable[bytes], skip: int) -> Iterator[bytes]:
    for chunk in chunks:
        if skip:
            chunk, skip = chunk[skip:], max(0, skip - len(chunk))
        if chunk:
            yield chunk


def decode_bytes(data: bytes) -> str:
    """The whole of `data` decoded by the same rules (newlines left as they are)."""
    view = memoryview(data)
    chunks = (bytes(view[i : i + READ_BYTES]) for i in range(0, len(data), READ_BYTES))
    encoding = scan(chunks, lambda offset, n: data[offset : offset + n]).encoding
    return data[encoding.skip :].decode(encoding.codec, "replace")


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
