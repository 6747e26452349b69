"""Tests for knn_explorer.core.datastore.documents, on real files built in tmp_path."""
from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from pathlib import Path

import pytest

from knn_explorer.core.datastore import documents as D
from knn_explorer.core.datastore.documents import (
    DEFAULT_MAX_BYTES,
    SUPPORTED_SUFFIXES,
    Document,
    DocumentError,
    SkippedFile,
    discover,
    iter_documents,
    read_document,
)

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX symlinks")


# --------------------------------------------------------------------------- builders


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF, one Helvetica text line per page, with a correct xref table."""
    objects: list[bytes] = []
    n = len(pages)
    # 1: catalog, 2: pages, 3: font, then (page, content) pairs.
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        page_no, content_no = 4 + 2 * i, 5 + 2 * i
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {content_no} 0 R >>".encode()
        )
        escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        assert page_no == len(objects) - 1
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypt_pdf(data: bytes, user_password: str, owner_password: str = "owner-secret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, owner_password)  # RC4-128 by default: no optional crypto dependency
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(path: Path, paragraphs: list[str], table: list[list[str]] | None = None) -> Path:
    import docx

    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    if table:
        t = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                t.cell(r, c).text = value
    document.save(str(path))
    return path


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def read_or_reason(path: Path, **kwargs) -> str:
    with pytest.raises(DocumentError) as info:
        read_document(path, **kwargs)
    reason = str(info.value)
    assert "\n" not in reason and reason == info.value.reason
    return reason


# --------------------------------------------------------------------------- constants


def test_public_constants():
    assert SUPPORTED_SUFFIXES == frozenset({".txt", ".md", ".rst", ".html", ".htm", ".pdf", ".docx"})
    assert DEFAULT_MAX_BYTES == 50 * 1024 * 1024


# --------------------------------------------------------------------------- text files


def test_utf8_text_with_bom_and_crlf(tmp_path):
    raw = "\ufeffGrüße, naïve €\r\nline two\rline three\n".encode("utf-8")
    path = write(tmp_path / "notes.txt", raw)
    doc = read_document(path)
    assert isinstance(doc, Document)
    assert doc.text == "Grüße, naïve €\nline two\nline three\n"
    assert doc.kind == "text"
    assert doc.path == path.resolve() and doc.path.is_absolute()
    assert doc.size == path.stat().st_size
    assert doc.mtime == path.stat().st_mtime
    import hashlib

    assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_latin1_text_is_decoded_as_latin(tmp_path):
    text = "Le café est prêt.\nCrème brûlée, naïve façade, garçon à côté.\n"
    path = write(tmp_path / "menu.md", text.encode("latin-1"))
    doc = read_document(path)
    assert "café" in doc.text and "Crème brûlée" in doc.text and "garçon" in doc.text
    assert doc.text == text


def test_short_latin1_word(tmp_path):
    # charset-normalizer alone guesses utf_16_be for these five bytes.
    doc = read_document(write(tmp_path / "w.txt", "café".encode("latin-1")))
    assert doc.text == "café"


def test_cp1252_smart_quotes(tmp_path):
    text = "He said \u201chello\u201d \u2014 it\u2019s fine\u2026 costs 5\u20ac."
    doc = read_document(write(tmp_path / "q.txt", text.encode("cp1252")))
    assert doc.text == text


def test_cyrillic_legacy_encoding_goes_to_detector(tmp_path):
    text = "Привет, как дела? Это тестовый документ на русском языке, в старой кодировке."
    doc = read_document(write(tmp_path / "ru.txt", text.encode("cp1251")))
    assert doc.text == text


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_with_bom(tmp_path, codec):
    bom = b"\xff\xfe" if codec.endswith("le") else b"\xfe\xff"
    path = write(tmp_path / "wide.rst", bom + "Ünïcode\r\ntext".encode(codec))
    assert read_document(path).text == "Ünïcode\ntext"


def test_utf8_bom_with_a_bad_byte_keeps_utf8(tmp_path):
    path = write(tmp_path / "mostly.txt", b"\xef\xbb\xbfna\xc3\xafve \xff end")
    assert read_document(path).text == "naïve \ufffd end"


def test_binary_named_txt(tmp_path):
    path = write(tmp_path / "blob.txt", bytes(range(256)) * 4)
    assert "binary" in read_or_reason(path)


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n "])
def test_empty_and_whitespace_files(tmp_path, content):
    path = write(tmp_path / "empty.txt", content)
    assert read_or_reason(path) == "empty file"


def test_uppercase_suffix_is_supported(tmp_path):
    path = write(tmp_path / "README.TXT", "shout")
    assert read_document(path).text == "shout"


# --------------------------------------------------------------------------- HTML


def test_html_blocks_scripts_and_inline(tmp_path):
    html = """<!DOCTYPE html><html><head><title>My Page</title>
    <style>body { color: red }</style><script>var hidden = "SCRIPT";</script></head>
    <body><!-- a comment -->
      <h1>Heading</h1>
      <p>Hello <b>bold</b>   world,
         across lines.</p>



      <ul><li>one</li><li>two</li></ul>
      <p>line<br>break</p>
      <table><tr><td>a</td><td>b</td></tr></table>
      <pre>  indented
    code</pre>
    </body></html>"""
    doc = read_document(write(tmp_path / "page.html", html))
    assert doc.kind == "html"
    text = doc.text
    assert "SCRIPT" not in text and "color" not in text and "comment" not in text
    assert text.startswith("My Page\n\nHeading\n\n")
    assert "Hello bold world, across lines." in text
    assert "one\ntwo" in text
    assert "line\nbreak" in text
    assert "a b" in text
    assert "  indented\n    code" in text
    assert "\n\n\n" not in text


def test_html_meta_charset_and_htm_suffix(tmp_path):
    html = '<html><head><meta charset="iso-8859-1"></head><body><p>caf\xe9 cr\xe8me</p></body></html>'
    doc = read_document(write(tmp_path / "old.htm", html.encode("latin-1")))
    assert doc.text == "café crème"


def test_html_latin1_without_meta_and_binary_html(tmp_path):
    html = "<p>Un caf\xe9 cr\xe8me, s'il vous pla\xeet.</p>".encode("latin-1")
    assert read_document(write(tmp_path / "legacy.html", html)).text == "Un café crème, s'il vous plaît."
    assert "binary" in read_or_reason(write(tmp_path / "bin.html", b"<p>\x00\x01</p>"))


def test_html_without_text(tmp_path):
    path = write(tmp_path / "blank.html", "<html><body><script>x()</script><p>  </p></body></html>")
    assert "no text" in read_or_reason(path)


def test_html_deep_nesting_does_not_recurse(tmp_path):
    depth = 3000
    html = "<div>" * depth + "deep" + "</div>" * depth
    try:
        doc = read_document(write(tmp_path / "deep.html", html))
    except RecursionError:  # bs4's own tree building can recurse; our walk must not be the cause
        pytest.skip("bs4 recursion in parsing")
    assert doc.text == "deep"


# --------------------------------------------------------------------------- PDF


def test_pdf_pages_joined(tmp_path):
    path = write(tmp_path / "paper.pdf", make_pdf(["Hello PDF world", "Second page here"]))
    doc = read_document(path)
    assert doc.kind == "pdf"
    assert doc.text == "Hello PDF world\n\nSecond page here"


def test_encrypted_pdf(tmp_path):
    path = write(tmp_path / "secret.pdf", encrypt_pdf(make_pdf(["Top secret"]), "hunter2"))
    assert "encrypted PDF" in read_or_reason(path)


def test_pdf_with_empty_user_password_is_read(tmp_path):
    path = write(tmp_path / "restricted.pdf", encrypt_pdf(make_pdf(["Only printing is restricted"]), ""))
    assert read_document(path).text == "Only printing is restricted"


def test_truncated_pdf(tmp_path):
    data = make_pdf(["Hello PDF world"])
    path = write(tmp_path / "cut.pdf", data[: len(data) // 3])
    reason = read_or_reason(path)
    assert reason.startswith("broken PDF: ") and reason != "broken PDF: not a PDF file"


def test_garbage_pdf(tmp_path):
    path = write(tmp_path / "junk.pdf", b"this is not a pdf at all\n" * 10)
    assert read_or_reason(path) == "broken PDF: not a PDF file"


def test_pdf_without_text(tmp_path):
    path = write(tmp_path / "scan.pdf", make_pdf([""]))
    assert "no text extracted" in read_or_reason(path)


# --------------------------------------------------------------------------- DOCX


def test_docx_paragraphs_and_tables(tmp_path):
    path = make_docx(tmp_path / "report.docx", ["First paragraph", "Second, with café"], [["r1c1", "r1c2"]])
    doc = read_document(path)
    assert doc.kind == "docx"
    assert doc.text == "First paragraph\nSecond, with café\nr1c1\nr1c2"


def test_zip_that_is_not_a_docx(tmp_path):
    path = tmp_path / "fake.docx"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "not a word document")
    reason = read_or_reason(path)
    assert reason.startswith("broken DOCX: ")


def test_docx_missing_document_part(tmp_path):
    good = make_docx(tmp_path / "good.docx", ["text"])
    bad = tmp_path / "bad.docx"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            if item.filename != "word/document.xml":
                dst.writestr(item, src.read(item))
    assert "broken DOCX" in read_or_reason(bad)


def test_not_a_zip_docx(tmp_path):
    assert "broken DOCX" in read_or_reason(write(tmp_path / "plain.docx", "just text"))


def test_ole_container_docx(tmp_path):
    path = write(tmp_path / "locked.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504)
    assert read_or_reason(path) == "encrypted or not a DOCX file"


def test_empty_docx(tmp_path):
    assert "no text extracted" in read_or_reason(make_docx(tmp_path / "blank.docx", []))


# --------------------------------------------------------------------------- size, permissions, kinds


def test_size_limit(tmp_path):
    path = write(tmp_path / "big.txt", "x" * 5000)
    reason = read_or_reason(path, max_bytes=1000)
    assert reason.startswith("over the size limit (") and "4.9 KB > 1000 bytes" in reason
    assert read_document(path, max_bytes=5000).text == "x" * 5000


def test_size_reason_in_megabytes():
    assert D._size_reason(int(73.1 * 1024 * 1024), DEFAULT_MAX_BYTES) == "over the size limit (73.1 MB > 50.0 MB)"
    # Equal after rounding: fall back to exact byte counts.
    assert "bytes" in D._size_reason(DEFAULT_MAX_BYTES + 1, DEFAULT_MAX_BYTES)


def test_unsupported_and_missing(tmp_path):
    png = write(tmp_path / "image.png", b"\x89PNG\r\n\x1a\n")
    assert read_or_reason(png) == "unsupported file type .png"
    assert read_or_reason(tmp_path / "nope.txt") == "no such file or directory"
    assert read_or_reason(tmp_path) == "is a directory"


def test_permission_error_is_one_line(tmp_path, monkeypatch):
    path = write(tmp_path / "locked.txt", "secret")

    def deny(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(D, "_open_binary", deny)
    assert read_or_reason(path) == "permission denied"
    items = list(iter_documents([path]))
    assert items == [SkippedFile(path.resolve(), "permission denied")]


@pytest.mark.skipif(os.name == "nt" or os.geteuid() == 0, reason="root ignores file modes")
def test_permission_denied_for_real(tmp_path):
    path = write(tmp_path / "locked.txt", "secret")
    path.chmod(0)
    try:
        assert read_or_reason(path) == "permission denied"
    finally:
        path.chmod(0o644)


def test_parser_bug_does_not_escape_iter_documents(tmp_path, monkeypatch):
    write(tmp_path / "a.txt", "fine")

    def boom(*_args):
        raise ValueError("parser exploded\nwith a second line")

    monkeypatch.setattr(D, "_text_source", boom)
    (item,) = list(iter_documents([tmp_path]))
    assert isinstance(item, SkippedFile) and "unexpected error" in item.reason and "\n" not in item.reason


# --------------------------------------------------------------------------- discovery


def build_tree(root: Path) -> None:
    write(root / "b.txt", "bee")
    write(root / "a.md", "# a")
    write(root / "sub" / "c.rst", "see")
    write(root / "sub" / "deeper" / "d.html", "<p>dee</p>")
    write(root / "image.png", b"\x89PNG")
    write(root / ".hidden.txt", "hidden")
    write(root / ".git" / "config.txt", "hidden dir")
    write(root / "sub" / ".cache" / "x.md", "hidden dir")


def test_discover_sorted_recursive_and_hidden(tmp_path):
    build_tree(tmp_path)
    files, skipped = discover([tmp_path])
    rel = [p.relative_to(tmp_path.resolve()).as_posix() for p in files]
    assert rel == ["a.md", "b.txt", "sub/c.rst", "sub/deeper/d.html"]
    assert [(s.path.name, s.reason) for s in skipped] == [("image.png", "unsupported file type .png")]
    assert all(p.is_absolute() for p in files)
    assert discover([tmp_path]) == (files, skipped)  # deterministic


def test_discover_missing_and_duplicates(tmp_path):
    build_tree(tmp_path)
    missing = tmp_path / "ghost"
    files, skipped = discover([tmp_path / "b.txt", missing, tmp_path, str(tmp_path / "b.txt"), tmp_path / "sub"])
    rel = [p.relative_to(tmp_path.resolve()).as_posix() for p in files]
    assert rel == ["b.txt", "a.md", "sub/c.rst", "sub/deeper/d.html"]
    assert SkippedFile(missing, "no such file or directory") in skipped


def test_explicit_hidden_file_is_read(tmp_path):
    path = write(tmp_path / ".notes.txt", "explicit")
    files, skipped = discover([path])
    assert files == [path.resolve()] and skipped == []


@needs_symlinks
def test_symlink_loop_and_dangling(tmp_path):
    root = tmp_path / "docs"
    write(root / "sub" / "inner.txt", "inner")
    os.symlink("..", root / "sub" / "loop")  # folder link to its parent
    os.symlink(root / "missing.txt", root / "dangling.txt")
    os.symlink("self.txt", root / "self.txt")  # a link to itself
    files, skipped = discover([root])
    assert [p.name for p in files] == ["inner.txt"]
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["loop"] == "symlink loop"
    assert reasons["dangling.txt"] == "dangling symlink"
    assert reasons["self.txt"] == "symlink loop"
    assert read_or_reason(root / "dangling.txt") == "dangling symlink"
    assert read_or_reason(root / "self.txt") == "symlink loop"


@needs_symlinks
def test_symlinks_are_followed_once(tmp_path):
    real = tmp_path / "real"
    write(real / "note.txt", "real note")
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(real, top / "a_link")  # sorted before the real folder's other link
    os.symlink(real / "note.txt", top / "b_file_link.txt")
    files, skipped = discover([top, real])
    assert files == [(real / "note.txt").resolve()]
    assert skipped == []


@needs_symlinks
def test_given_dangling_symlink(tmp_path):
    link = tmp_path / "gone.md"
    os.symlink(tmp_path / "never.md", link)
    files, skipped = discover([link])
    assert files == [] and skipped == [SkippedFile(link, "dangling symlink")]


# --------------------------------------------------------------------------- iter_documents


def test_iter_documents_mixed_folder(tmp_path):
    root = tmp_path / "mixed"
    write(root / "01_good.txt", "good text")
    write(root / "02_latin.txt", "Un café crème, s'il vous plaît.".encode("latin-1"))
    write(root / "03_binary.txt", b"\x00\x01\x02binary")
    write(root / "04_empty.md", b"")
    write(root / "05_paper.pdf", make_pdf(["PDF text"]))
    write(root / "06_secret.pdf", encrypt_pdf(make_pdf(["hidden"]), "pw"))
    data = make_pdf(["cut"])
    write(root / "07_cut.pdf", data[: len(data) // 3])
    make_docx(root / "08_word.docx", ["Word text"])
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w") as zf:
        zf.writestr("x.txt", "x")
    write(root / "09_fake.docx", zip_buf.getvalue())
    write(root / "10_big.txt", "y" * 150_000)  # the DOCX alone is ~36 KB
    write(root / "11_pic.png", b"\x89PNG")
    write(root / ".12_hidden.txt", "never seen")
    if os.name != "nt":
        os.symlink(root / "nothing.txt", root / "13_dangling.txt")
        os.symlink(".", root / "14_loop")

    items = list(iter_documents([root], max_bytes=100_000))
    names = [item.path.name for item in items]
    assert names == sorted(names)  # discovery order = sorted names in one folder
    assert ".12_hidden.txt" not in names
    assert all("\n" not in s.reason for s in items if isinstance(s, SkippedFile))

    by_name = {item.path.name: item for item in items}
    docs = {n: i.text for n, i in by_name.items() if isinstance(i, Document)}
    assert docs == {
        "01_good.txt": "good text",
        "02_latin.txt": "Un café crème, s'il vous plaît.",
        "05_paper.pdf": "PDF text",
        "08_word.docx": "Word text",
    }
    expect = {
        "03_binary.txt": "binary",
        "04_empty.md": "empty file",
        "06_secret.pdf": "encrypted PDF",
        "07_cut.pdf": "broken PDF",
        "09_fake.docx": "broken DOCX",
        "10_big.txt": "size limit",
        "11_pic.png": "unsupported file type .png",
    }
    if os.name != "nt":
        expect |= {"13_dangling.txt": "dangling symlink", "14_loop": "symlink loop"}
    skipped = {n: i.reason for n, i in by_name.items() if isinstance(i, SkippedFile)}
    assert set(skipped) == set(expect)
    for name, keyword in expect.items():
        assert keyword in skipped[name], (name, skipped[name])

    assert [i.path.name for i in iter_documents([root], max_bytes=100_000)] == names  # deterministic


def test_iter_documents_is_lazy_and_takes_strings(tmp_path):
    write(tmp_path / "a.txt", "A")
    write(tmp_path / "b.txt", "B")
    it = iter_documents([str(tmp_path)])
    first = next(it)
    assert isinstance(first, Document) and first.text == "A"
    assert [d.text for d in it] == ["B"]


def test_document_is_frozen(tmp_path):
    doc = read_document(write(tmp_path / "a.txt", "A"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.text = "changed"  # type: ignore[misc]
