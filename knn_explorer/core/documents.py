"""Turn user files and folders into plain text for the datastore.

Every bad file becomes a `SkippedFile` with a one-line reason the GUI can show as is; nothing
here raises for a bad file except `read_document`, which raises `DocumentError(reason)`.
Pure Python: no Qt, so the CLI and tests can use it.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class Document:
    path: Path  # absolute, resolved
    text: str  # datastore offsets are character offsets into this string
    size: int  # bytes on disk
    mtime: float
    sha256: str  # of the file bytes
    kind: str  # "text" | "html" | "pdf" | "docx"


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
        if resolved.suffix.lower() not in SUPPORTED_SUFFIXES:  # the target's suffix names its format
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


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)  # +1: notices a file that grew after the size check


def read_document(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Document:
    """Read one file into a Document or raise DocumentError(reason)."""
    raw = os.path.abspath(os.fspath(path))
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
    kind = _KIND_BY_SUFFIX.get(resolved.suffix.lower())
    if kind is None:
        raise DocumentError(_suffix_reason(resolved))
    if st.st_size > max_bytes:
        raise DocumentError(_size_reason(st.st_size, max_bytes))
    try:
        data = _read_bytes(resolved, max_bytes)
    except OSError as exc:
        raise DocumentError(_os_reason(exc)) from None
    if len(data) > max_bytes:
        raise DocumentError(_size_reason(len(data), max_bytes))
    if not data:
        raise DocumentError("empty file")

    if kind == "text":
        text = _text_from_bytes(data)
    elif kind == "html":
        text = _html_to_text(data)
    elif kind == "pdf":
        text = _pdf_to_text(data)
    else:
        text = _docx_to_text(data)

    return Document(
        path=resolved,
        text=text,
        size=len(data),
        mtime=st.st_mtime,
        sha256=hashlib.sha256(data).hexdigest(),
        kind=kind,
    )


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


# --------------------------------------------------------------------------- plain text

_BOMS = (
    # UTF-32 first: its little-endian BOM starts with the UTF-16 one.
    (b"\xff\xfe\x00\x00", "utf-32"),
    (b"\x00\x00\xfe\xff", "utf-32"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode(data: bytes) -> str:
    for bom, codec in _BOMS:
        if data.startswith(bom):
            # The BOM is strong evidence; replace the odd broken unit rather than reject the file.
            return data.decode(codec, errors="replace")
    if b"\x00" in data:
        raise DocumentError("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if data.startswith(b"\xef\xbb\xbf"):
            return data[3:].decode("utf-8", errors="replace")
    text = _western_guess(data)
    if text is not None:
        return text
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is not None:
            return str(best)
    except Exception:  # detection is best effort; the fallbacks below always decode
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _western_guess(data: bytes) -> str | None:
    """cp1252 if it reads as clean Latin text, else None.

    charset-normalizer often ranks cp1250/cp1257/utf_16_be above cp1252 for short French or
    German text ("crème" -> "crčme"), so a plausible cp1252 reading wins. Cyrillic, Greek and
    other single-byte scripts read as cp1252 are nearly all high-byte letters and noisy, so they
    fail these checks and go to charset-normalizer.
    """
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return None
    if len(text) > 48_000:  # three slices are enough evidence and keep big files fast
        mid = len(text) // 2
        sample = text[:16_000] + text[mid : mid + 16_000] + text[-16_000:]
    else:
        sample = text
    letters = [c for c in sample if c.isalpha()]
    if not letters:
        return None
    high = sum(1 for c in letters if ord(c) > 127)
    if high / len(letters) > 0.4:
        return None
    try:
        from charset_normalizer.md import mess_ratio
    except ImportError:  # internal module: if it moves, fall back to the detector's own ranking
        return None
    if mess_ratio(sample, 0.2) > 0.1:
        return None
    return text


def _text_from_bytes(data: bytes) -> str:
    text = _normalise_newlines(_decode(data)).lstrip("\ufeff")
    if not text.strip():
        raise DocumentError("empty file")
    return text


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
        if not data.startswith(tuple(bom for bom, _ in _BOMS)) and b"\x00" not in data:
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


def _docx_to_text(data: bytes) -> str:
    # Password-protected DOCX files (and old .doc renamed) are OLE compound files, not zips.
    if data.startswith(_OLE_MAGIC):
        raise DocumentError("encrypted or not a DOCX file")
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DocumentError("broken DOCX: not a zip file")
    try:
        import docx

        document = docx.Document(io.BytesIO(data))
        lines = list(_docx_lines(document))
    except Exception as exc:
        raise DocumentError(f"broken DOCX: {_short_cause(exc)}") from None
    text = _normalise_newlines("\n".join(lines))
    if not text.strip():
        raise DocumentError("no text extracted")
    return text


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
