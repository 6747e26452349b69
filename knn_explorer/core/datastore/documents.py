"""Turn user files and folders into plain text for the datastore.

Every bad file becomes a `SkippedFile` with a one-line reason the GUI can show as is; nothing
here raises for a bad file except `open_document` / `read_document`, which raise
`DocumentError(reason)`. `open_document` gives the text in pieces (a 50 MB text file is never one
string); `read_document` joins them. Paths that leave this module for JSON, SQLite or the screen
go through `path_text` (file names need not be UTF-8). Pure Python: no Qt.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from . import text_stream

_MB = 1024 * 1024

SUPPORTED_SUFFIXES: frozenset[str] = frozenset(
    {".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".docx"}
)
DEFAULT_MAX_BYTES: int = 50 * _MB

_KIND_BY_SUFFIX = {
    ".txt": "text",
    ".md": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
    ".docx": "docx",
}

_MAX_REASON_CHARS = 160
PIECE_CHARS = text_stream.READ_BYTES  # about the most characters `DocumentSource.pieces` yields at once


@dataclass(frozen=True)
class Document:
    path: Path  # absolute, resolved
    text: str  # datastore offsets are character offsets into this string
    size: int  # bytes on disk
    mtime: float
    sha256: str  # of the file bytes
    kind: str  # "text" | "html" | "pdf" | "docx"


@dataclass(frozen=True)
class DocumentSource:
    """A readable document whose text comes in pieces; `read_document` is this, joined."""

    path: Path  # absolute, resolved; may hold surrogates (see path_text)
    size: int
    mtime: float
    sha256: str
    kind: str
    _pieces: Callable[[], Iterator[str]]

    def pieces(self) -> Iterator[str]:
        """The text in order, about PIECE_CHARS characters at a time. Raises DocumentError while
        iterating when the file turns out to hold no text ("empty file") or cannot be read again."""
        return self._pieces()


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str  # one line, human-readable


class DocumentError(Exception):
    """A file that cannot become a Document; str(exc) is the one-line reason."""

    def __init__(self, reason: str) -> None:
        self.reason = _one_line(reason)
        super().__init__(self.reason)


# --------------------------------------------------------------------------- helpers


def _one_line(text: str, limit: int = _MAX_REASON_CHARS) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _short_cause(exc: BaseException) -> str:
    msg = _one_line(str(exc), 100)
    return msg or type(exc).__name__


def _os_reason(exc: OSError) -> str:
    code = exc.errno
    if isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENOENT:
        return "no such file or directory"
    if code == errno.EISDIR:
        return "is a directory"
    if code == getattr(errno, "ELOOP", None):
        return "symlink loop"
    return _one_line((exc.strerror or str(exc) or type(exc).__name__).lower())


def _fmt_size(n: float) -> str:
    if n >= 1024 * _MB:
        return f"{n / (1024 * _MB):.1f} GB"
    if n >= _MB:
        return f"{n / _MB:.1f} MB"
    if n >= 1024:
        return f"{n / 1024:.1f} KB"
    return f"{int(n)} bytes"


def _size_reason(size: int, limit: int) -> str:
    have, cap = _fmt_size(size), _fmt_size(limit)
    if have == cap:  # e.g. 50.04 MB vs 50.0 MB: rounding would hide the difference
        have, cap = f"{size} bytes", f"{limit} bytes"
    return f"over the size limit ({have} > {cap})"


def _suffix_reason(path: Path) -> str:
    suffix = path.suffix.lower()
    return f"unsupported file type {suffix}" if suffix else "unsupported file type (no extension)"


SNIFF_BYTES = 8192
_TEXT_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")  # UTF-8, UTF-16 LE/BE (UTF-32 LE starts like UTF-16 LE)


def _kind_of(path: Path) -> str | None:
    """What reads `path`: its suffix says (.md, .pdf, ...), or, for any other suffix or none
    (LICENSE-2.0, LGPL-2.1, README, notes.cfg), its content: text that decodes is read as text."""
    return _KIND_BY_SUFFIX.get(path.suffix.lower()) or ("text" if _looks_like_text(path) else None)


def _looks_like_text(path: Path) -> bool:
    """The first 8 KB carry a Unicode byte-order mark, or hold no NUL byte and decode as UTF-8 (a
    character cut by the 8 KB boundary allowed). Other 8-bit encodings stay unsupported here:
    without a telling suffix, bytes that are not UTF-8 are far more often binary than Latin-1."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    if head.startswith(_TEXT_BOMS):
        return True
    if not head.strip() or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return len(head) == SNIFF_BYTES and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _is_hidden(entry: os.DirEntry) -> bool:
    if entry.name.startswith("."):
        return True
    # Windows marks hidden files with an attribute, not a dot.
    attrs = 0
    try:
        attrs = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
    except OSError:
        pass
    return bool(attrs & getattr(stat, "FILE_ATTRIBUTE_HIDDEN", 0))


def _stat_reason(path: str, exc: OSError) -> str:
    """Explain why following `path` failed: links get their own reasons."""
    if exc.errno == getattr(errno, "ELOOP", None):
        return "symlink loop"
    if os.path.islink(path) and exc.errno == errno.ENOENT:
        return "dangling symlink"
    return _os_reason(exc)


# --------------------------------------------------------------------------- paths as text

_ESCAPED_BYTE = re.compile(r"(\\x[0-9a-f]{2})")


def path_text(path: str | Path) -> str:
    """`path` as text any UTF-8 file, JSON document or database accepts.

    File names are bytes on POSIX; Python keeps the bytes that are not UTF-8 as lone surrogates
    ("caf\\udce9"), which no UTF-8 encoder takes. Here they become backslash escapes ("caf\\xe9"),
    readable on screen; `read_document` finds the file again from this text.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def path_from_text(text: str | Path) -> Path:
    """The file `path_text` named: the text itself if such a file exists, else its \\x escapes as bytes."""
    text = os.fspath(text)
    if "\\x" not in text or os.path.lexists(text):
        return Path(text)
    parts = _ESCAPED_BYTE.split(text)  # odd items are the escapes
    raw = b"".join(bytes([int(part[2:], 16)]) if i % 2 else part.encode("utf-8") for i, part in enumerate(parts))
    original = os.fsdecode(raw)
    return Path(original) if os.path.lexists(original) else Path(text)


# --------------------------------------------------------------------------- discovery


def _discover_iter(paths: Iterable[str | Path]) -> Iterator[Path | SkippedFile]:
    """Yield candidate files (resolved) and skipped entries, interleaved in discovery order."""
    seen_files: set[Path] = set()
    visited_dirs: set[Path] = set()

    def file_or_skip(path: str, st: os.stat_result) -> Path | SkippedFile | None:
        if not stat.S_ISREG(st.st_mode):
            return SkippedFile(Path(path), "not a regular file")
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop on Python < 3.13
            reason = _stat_reason(path, exc) if isinstance(exc, OSError) else "symlink loop"
            return SkippedFile(Path(path), reason)
        if _kind_of(resolved) is None:  # the target's suffix names its format, or its content is text
            return SkippedFile(Path(path), _suffix_reason(resolved))
        if resolved in seen_files:
            return None
        seen_files.add(resolved)
        return resolved

    def walk(root: Path) -> Iterator[Path | SkippedFile]:
        # Iterative depth-first walk; the ancestor set tells a loop from a folder merely seen before.
        visited_dirs.add(root)
        stack: list[tuple[Path, Iterator[os.DirEntry]]] = []
        ancestors: set[Path] = set()

        def enter(directory: Path) -> SkippedFile | None:
            try:
                with os.scandir(directory) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                return SkippedFile(directory, _os_reason(exc))
            stack.append((directory, iter(entries)))
            ancestors.add(directory)
            return None

        skipped = enter(root)
        if skipped is not None:
            yield skipped
            return
        while stack:
            directory, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                ancestors.discard(directory)
                continue
            if _is_hidden(entry):
                continue
            try:
                st = os.stat(entry.path)
            except OSError as exc:
                yield SkippedFile(Path(entry.path), _stat_reason(entry.path, exc))
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    resolved = Path(entry.path).resolve(strict=True)
                except (OSError, RuntimeError):
                    yield SkippedFile(Path(entry.path), "symlink loop")
                    continue
                if resolved in ancestors:
                    yield SkippedFile(Path(entry.path), "symlink loop")
                elif resolved not in visited_dirs:  # seen before via another link: files already listed
                    visited_dirs.add(resolved)
                    skipped = enter(resolved)
                    if skipped is not None:
                        yield skipped
                continue
            result = file_or_skip(entry.path, st)
            if result is not None:
                yield result

    for given in paths:
        raw = os.path.abspath(os.fspath(given))
        try:
            st = os.stat(raw)
        except OSError as exc:
            yield SkippedFile(Path(raw), _stat_reason(raw, exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                root = Path(raw).resolve(strict=True)
            except (OSError, RuntimeError):
                yield SkippedFile(Path(raw), "symlink loop")
                continue
            if root not in visited_dirs:
                yield from walk(root)
            continue
        result = file_or_skip(raw, st)
        if result is not None:
            yield result


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[SkippedFile]]:
    """Expand files/folders (folders recursively, sorted, deterministic order) into candidate files.

    Follows symlinks but detects loops (a folder reached again while inside itself) and dangling
    links. Hidden files/folders (name starts with '.') are ignored silently. A path given that
    does not exist -> SkippedFile 'no such file or directory'. Files with unsupported suffix ->
    SkippedFile. Duplicates (same resolved path) appear once.
    """
    files: list[Path] = []
    skipped: list[SkippedFile] = []
    for item in _discover_iter(paths):
        (skipped if isinstance(item, SkippedFile) else files).append(item)
    return files, skipped


# --------------------------------------------------------------------------- reading


def _open_binary(path: Path):
    return open(path, "rb")


def _read_bytes(path: Path, max_bytes: int, expected: int) -> bytes:
    """Up to max_bytes + 1 bytes (one more notices a file that grew after the size check). Asking
    for the expected size first: read(n) sets aside n bytes, 50 MB for every small file."""
    with _open_binary(path) as fh:
        data = fh.read(expected + 1)
        if len(data) > expected:
            data += fh.read(max_bytes + 1 - len(data))
        return data


def open_document(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> DocumentSource:
    """Check one file and get ready to read its text, or raise DocumentError(reason).

    A text file is scanned here (size, hash, encoding) and decoded only as `pieces()` runs, so its
    size costs no memory; other kinds are parsed here (their parsers want the whole file).
    `path` may be a `path_text`.
    """
    raw = os.path.abspath(os.fspath(path_from_text(path)))
    try:
        st = os.stat(raw)
    except OSError as exc:
        raise DocumentError(_stat_reason(raw, exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise DocumentError("is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise DocumentError("not a regular file")  # FIFOs and devices would block or never end
    try:
        resolved = Path(raw).resolve(strict=True)
    except (OSError, RuntimeError):
        raise DocumentError("symlink loop") from None
    kind = _kind_of(resolved)
    if kind is None:
        raise DocumentError(_suffix_reason(resolved))
    if st.st_size > max_bytes:
        raise DocumentError(_size_reason(st.st_size, max_bytes))
    try:
        if kind == "text":
            return _text_source(resolved, st, max_bytes)
        return _parsed_source(resolved, st, kind, max_bytes)
    except DocumentError:
        raise
    except Exception as exc:  # a parser bug must not end a whole build
        raise _unexpected(exc) from None


def _unexpected(exc: Exception) -> DocumentError:
    return DocumentError(f"unexpected error: {type(exc).__name__}: {_short_cause(exc)}")


def read_document(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """Read one file into a Document or raise DocumentError(reason)."""
    source = open_document(path, max_bytes)
    return Document(path=source.path, text="".join(source.pieces()), size=source.size, mtime=source.mtime,
                    sha256=source.sha256, kind=source.kind)


def iter_documents(
    paths: Iterable[str | Path], max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Document | SkippedFile]:
    """discover() then read each, yielding Documents and SkippedFiles in discovery order.

    Never raises for a bad file.
    """
    for item in _discover_iter(paths):
        if isinstance(item, SkippedFile):
            yield item
            continue
        try:
            yield read_document(item, max_bytes)
        except DocumentError as exc:
            yield SkippedFile(item, exc.reason)
        except Exception as exc:  # a parser bug must not end a whole import
            yield SkippedFile(item, _one_line(f"unexpected error: {type(exc).__name__}: {_short_cause(exc)}"))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _parsed_source(path: Path, st: os.stat_result, kind: str, max_bytes: int) -> DocumentSource:
    try:
        data = _read_bytes(path, max_bytes, st.st_size)
    except OSError as exc:
        raise DocumentError(_os_reason(exc)) from None
    if len(data) > max_bytes:
        raise DocumentError(_size_reason(len(data), max_bytes))
    if not data:
        raise DocumentError("empty file")
    if kind == "html":
        text = _html_to_text(data)
    elif kind == "pdf":
        text = _pdf_to_text(data)
    else:
        text = _docx_to_text(data, max_bytes)
    if _SURROGATE.search(text):  # a broken PDF string can decode to half a pair; UTF-8 files refuse those
        text = _SURROGATE.sub("\ufffd", text)

    def pieces() -> Iterator[str]:
        for start in range(0, len(text), PIECE_CHARS):
            yield text[start : start + PIECE_CHARS]

    return DocumentSource(path, len(data), st.st_mtime, hashlib.sha256(data).hexdigest(), kind, pieces)


# --------------------------------------------------------------------------- plain text

_normalise_newlines = text_stream.normalise_newlines


def _text_source(path: Path, st: os.stat_result, max_bytes: int) -> DocumentSource:
    """Scan a text file now, decode it piece by piece later (text_stream has the rules)."""

    def chunks(limit: int) -> Iterator[bytes]:
        with _open_binary(path) as fh:
            while limit > 0 and (chunk := fh.read(min(text_stream.READ_BYTES, limit))):
                limit -= len(chunk)
                yield chunk

    def read_at(offset: int, n: int) -> bytes:
        with _open_binary(path) as fh:
            fh.seek(offset)
            return fh.read(n)

    try:
        scanned = text_stream.scan(chunks(max_bytes + 1), read_at)  # +1: notices a file that grew
    except text_stream.NotText as exc:
        raise DocumentError(str(exc)) from None
    except OSError as exc:
        raise DocumentError(_os_reason(exc)) from None
    if scanned.size > max_bytes:
        raise DocumentError(_size_reason(scanned.size, max_bytes))
    if not scanned.size:
        raise DocumentError("empty file")

    def pieces() -> Iterator[str]:
        blank = True
        try:
            for piece in text_stream.decoded_pieces(chunks(scanned.size), scanned.encoding):
                blank = blank and piece.isspace()
                yield piece
        except OSError as exc:
            raise DocumentError(_os_reason(exc)) from None
        except Exception as exc:  # a decoding bug must not end a whole build either
            raise _unexpected(exc) from None
        if blank:
            raise DocumentError("empty file")

    return DocumentSource(path, scanned.size, st.st_mtime, scanned.sha256, "text", pieces)


def _decode(data: bytes) -> str:
    try:
        return text_stream.decode_bytes(data)
    except text_stream.NotText as exc:
        raise DocumentError(str(exc)) from None


# --------------------------------------------------------------------------- HTML

# Not "head": html.parser does not repair markup, so body text after an unclosed <head> nests
# inside it. <title> is read separately and put first.
_HTML_DROP = frozenset({"script", "style", "template", "noscript", "svg", "math", "title"})
# Block elements: 1 = line break around them, 2 = blank line (paragraph-like).
_HTML_BLOCKS = {
    **dict.fromkeys(
        ("p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "table", "ul", "ol", "dl",
         "figure", "hr", "section", "article", "aside", "header", "footer", "main", "nav",
         "form", "fieldset", "details", "address"),
        2,
    ),
    **dict.fromkeys(
        ("div", "li", "dt", "dd", "tr", "caption", "figcaption", "summary", "legend", "option",
         "body", "html", "center", "menu", "tbody", "thead", "tfoot"),
        1,
    ),
}
_HTML_PRE = frozenset({"pre", "textarea", "listing", "plaintext", "xmp"})
_HTML_CELLS = frozenset({"td", "th"})
_WS = re.compile(r"\s+")


def _html_markup(data: bytes) -> str | bytes:
    """Decoded text, or the bytes themselves when only the page's own <meta charset> can tell."""
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if not data.startswith(tuple(bom for bom, _ in text_stream.BOMS)) and b"\x00" not in data:
            try:
                from bs4.dammit import EncodingDetector

                if EncodingDetector.find_declared_encoding(data, is_html=True):
                    return data  # bs4 decodes with the declared charset
            except Exception:  # only an optimisation over the generic guess below
                pass
    # Same rules as plain text otherwise: bs4's own guess ranks cp1250 over cp1252 for French.
    return _decode(data)


def _html_to_text(data: bytes) -> str:
    from bs4 import BeautifulSoup
    from bs4.element import NavigableString, PreformattedString, Tag

    soup = BeautifulSoup(_html_markup(data), "html.parser")
    title = soup.find("title")
    title_text = _WS.sub(" ", title.get_text()).strip() if title else ""

    out: list[str] = []
    pending = 0  # newlines owed before the next text

    def emit_break(n: int) -> None:
        nonlocal pending
        pending = max(pending, n)

    def emit_text(s: str, pre: bool) -> None:
        nonlocal pending
        if not pre:
            s = _WS.sub(" ", s)
            if pending or not out or out[-1].endswith((" ", "\n")):
                s = s.lstrip(" ")
            if not s:
                return
        if pending and out:
            while out and not out[-1].strip(" "):
                out.pop()
            if out:
                out[-1] = out[-1].rstrip(" ")
                out.append("\n" * pending)
        pending = 0
        out.append(_normalise_newlines(s) if pre else s)

    if title_text:
        emit_text(title_text, False)
        emit_break(2)

    # Explicit stack: deeply nested pages must not hit the recursion limit.
    stack = [(iter(soup.children), "", False)]
    while stack:
        children, name, in_pre = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            emit_break(_HTML_BLOCKS.get(name, 0))
            continue
        if isinstance(child, Tag):
            tag = (child.name or "").lower()
            if tag in _HTML_DROP:
                continue
            if tag == "br":
                pending += 1
                continue
            emit_break(_HTML_BLOCKS.get(tag, 0))
            if tag in _HTML_CELLS:
                emit_text(" ", False)
            stack.append((iter(child.children), tag, in_pre or tag in _HTML_PRE))
        elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
            emit_text(str(child), in_pre)  # comments, doctypes, CDATA are PreformattedStrings

    text = re.sub(r"[ \t]+\n", "\n", "".join(out))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        raise DocumentError("no text extracted")
    return text


# --------------------------------------------------------------------------- PDF


def _pdf_to_text(data: bytes) -> str:
    import logging

    from pypdf import PasswordType, PdfReader
    from pypdf.errors import DependencyError

    if b"%PDF-" not in data[:1024]:  # pypdf's own message for this is "Stream has ended unexpectedly"
        raise DocumentError("broken PDF: not a PDF file")
    # pypdf logs a warning for every recoverable defect; the reason string is what users see.
    logger = logging.getLogger("pypdf")
    old_level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        try:
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                # Many PDFs are "encrypted" only to restrict printing; the empty user password opens them.
                if reader.decrypt("") == PasswordType.NOT_DECRYPTED:
                    raise DocumentError("encrypted PDF")
            pages = reader.pages
            count = len(pages)
        except DocumentError:
            raise
        except DependencyError:
            # AES needs the optional 'cryptography' package, even to try the empty password.
            raise DocumentError("encrypted PDF (AES needs the 'cryptography' package)") from None
        except Exception as exc:
            raise DocumentError(f"broken PDF: {_short_cause(exc)}") from None

        texts: list[str] = []
        first_error: Exception | None = None
        for i in range(count):
            # One bad page should not cost the rest of the document.
            try:
                page_text = pages[i].extract_text() or ""
            except Exception as exc:
                first_error = first_error or exc
                continue
            page_text = _normalise_newlines(page_text).strip()
            if page_text:
                texts.append(page_text)
    finally:
        logger.setLevel(old_level)

    if not texts:
        if first_error is not None:
            raise DocumentError(f"broken PDF: {_short_cause(first_error)}")
        raise DocumentError("no text extracted (scanned PDF?)")
    return "\n\n".join(texts)


# --------------------------------------------------------------------------- DOCX

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


# What a DOCX may unpack to: its text may be as long as a text file's (max_bytes) and its XML
# markup about doubles that (3.8 MB of text came in 7.3 MB of XML, and 70 MB of python-docx
# objects), plus the styles, theme and font tables every DOCX carries whatever its length
# (python-docx's blank template: 36 KB unpacking to 0.8 MB).
_UNPACKED_PER_MAX_BYTE = 2
_UNPACKED_ALLOWANCE = 4 * _MB
# Real DOCX files unpack to 3-30 times their size (XML deflates 5-30:1, pictures not at all). Past
# 100:1, an archive that unpacks to more than the allowance is padding made to be inflated: 92 KB
# of empty paragraphs unpack to 95 MB, which python-docx turns into 1.8 GB of objects.
_MAX_UNPACK_RATIO = 100
_INFLATE_READ = 1 << 20


def _docx_to_text(data: bytes, max_bytes: int) -> str:
    # Password-protected DOCX files (and old .doc renamed) are OLE compound files, not zips.
    if data.startswith(_OLE_MAGIC):
        raise DocumentError("encrypted or not a DOCX file")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DocumentError("broken DOCX: not a zip file")
    try:
        import docx

        _check_unpacked_size(data, max_bytes)
        document = docx.Document(io.BytesIO(data))
        lines = list(_docx_lines(document))
    except DocumentError:
        raise
    except Exception as exc:
        raise DocumentError(f"broken DOCX: {_short_cause(exc)}") from None
    text = _normalise_newlines("\n".join(lines))
    if not text.strip():
        raise DocumentError("no text extracted")
    return text


def _check_unpacked_size(data: bytes, max_bytes: int) -> None:
    """Refuse a zip that unpacks to too much, before a parser inflates it.

    The sizes the archive declares come first (cheap, and they catch nearly every bomb); then each
    member is inflated a megabyte at a time and counted, because declarations can lie. Nothing
    inflated is kept.
    """
    limit = _UNPACKED_PER_MAX_BYTE * max_bytes + _UNPACKED_ALLOWANCE
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        _check_unpacked_total(sum(m.file_size for m in members), len(data), limit)
        done = 0
        for member in members:
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                # Word writes deflate; zipfile inflates bzip2 and LZMA a whole read at once, unbounded.
                raise DocumentError(f"broken DOCX: unsupported zip compression (method {member.compress_type})")
            inflated = 0
            with archive.open(member) as stream:
                while chunk := stream.read(_INFLATE_READ):
                    inflated += len(chunk)
                    if inflated > member.file_size:
                        raise DocumentError(f"broken DOCX: {member.filename} unpacks to more than it declares")
                    _check_unpacked_total(done + inflated, len(data), limit)
            done += inflated


def _check_unpacked_total(unpacked: int, packed: int, limit: int) -> None:
    if unpacked > limit:
        raise DocumentError(f"unpacks to {_fmt_size(unpacked)}, over the limit ({_fmt_size(limit)})")
    if unpacked > _UNPACKED_ALLOWANCE and unpacked > _MAX_UNPACK_RATIO * packed:
        raise DocumentError(f"unpacks to {_fmt_size(unpacked)}, {unpacked // max(packed, 1):,} times its size "
                            f"(over the {_MAX_UNPACK_RATIO}:1 limit)")


def _docx_lines(document) -> Iterator[str]:
    """Body paragraphs in order, with table cells' paragraphs where the tables stand."""
    from docx.table import Table

    if not hasattr(document, "iter_inner_content"):  # older python-docx: paragraphs only
        for paragraph in document.paragraphs:
            yield paragraph.text
        return

    def from_table(table: Table) -> Iterator[str]:
        for row in table.rows:
            seen = set()
            for cell in row.cells:
                if id(cell._tc) in seen:  # merged cells repeat across the row
                    continue
                seen.add(id(cell._tc))
                for block in cell.iter_inner_content():
                    if isinstance(block, Table):
                        yield from from_table(block)
                    else:
                        yield block.text

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            yield from from_table(block)
        else:
            yield block.text
