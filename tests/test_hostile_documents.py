"""What a user's folder can hold that once broke a build: a file name that is not UTF-8, zip bombs
dressed as DOCX files, one enormous line of text. Each is read, or skipped with a one-line reason,
without taking the build down or memory up."""
from __future__ import annotations

import io
import json
import os
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from corpus import PARAGRAPHS
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters, DatastoreBuilder
from knn_explorer.core.datastore.documents import DocumentError, read_document
from knn_explorer.core.datastore.library import build_datastore
from knn_explorer.core.models import load_model
from knn_explorer.core.progress import Cancelled

PARAMS = BuildParameters(context_length=32, stride=16, batch_size=4)
MB = 1024 * 1024


@pytest.fixture(scope="module")
def tiny_model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), device="cpu")


def strict_json(path: Path):
    return json.loads(path.read_bytes().decode("utf-8"))  # strict: a lone surrogate would not decode


# --------------------------------------------------------------------------- a file name that is not UTF-8


@pytest.mark.skipif(os.name == "nt", reason="POSIX file names are bytes")
def test_a_file_name_that_is_not_utf8_is_indexed_and_catalogued(tmp_path, tiny_model):
    folder = tmp_path / os.fsdecode(b"d\xf6cs")  # Latin-1 names, as an old archive or USB stick has them
    folder.mkdir()
    text = PARAGRAPHS["notes/datastore.txt"]
    (folder / os.fsdecode(b"caf\xe9-notes.txt")).write_text(text, encoding="utf-8")
    (folder / os.fsdecode(b"r\xe9sum\xe9.png")).write_bytes(b"\x89PNG")
    catalog = Catalog()

    report = build_datastore(catalog, "latin names", tiny_model, [folder], PARAMS)

    (indexed,) = report.documents
    assert indexed["path"].endswith("d\\xf6cs/caf\\xe9-notes.txt")
    (skipped,) = report.skipped
    assert skipped["path"].endswith("r\\xe9sum\\xe9.png") and skipped["reason"] == "unsupported file type .png"
    manifest = strict_json(report.folder / "manifest.json")
    assert manifest["state"] == "complete" and manifest["sources"] == [str(folder.parent / "d\\xf6cs")]
    assert strict_json(report.folder / "skipped.json") == report.skipped
    lines = (report.folder / "documents.jsonl").read_bytes().decode("utf-8").splitlines()
    assert [json.loads(line)["path"] for line in lines] == [indexed["path"]]
    rows = {row.path: row for row in catalog.datastore("latin names").documents}
    assert rows[indexed["path"]].status == "indexed" and rows[skipped["path"]].status == "skipped"
    # The app opens a neighbour's document from this text (double-click): it finds the real file.
    assert read_document(indexed["path"]).text == text


# --------------------------------------------------------------------------- zip bombs dressed as DOCX

CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="word/document.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>'
)
BODY_START = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
    b"<w:p><w:r><w:t>Hello</w:t></w:r></w:p>"
)
BODY_END = b"</w:body></w:document>"
EMPTY_PARAGRAPHS = b"<w:p/>" * (MB // 6)  # a megabyte of them


def docx_with_body(path: Path, paragraph_megabytes: int, compression=zipfile.ZIP_DEFLATED) -> Path:
    """A minimal real DOCX whose document.xml holds `paragraph_megabytes` MB of empty paragraphs."""
    level = 9 if compression == zipfile.ZIP_DEFLATED else None
    with zipfile.ZipFile(path, "w", compression, compresslevel=level) as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        zf.writestr("_rels/.rels", RELS)
        with zf.open("word/document.xml", "w") as member:
            member.write(BODY_START)
            for _ in range(paragraph_megabytes):
                member.write(EMPTY_PARAGRAPHS)
            member.write(BODY_END)
    return path


def deflated_zeros(megabytes: int) -> bytes:
    """A raw deflate stream of `megabytes` MB of zeros, built in milliseconds: after a full flush
    the compressor forgets its history, so one flushed megabyte repeated is a valid stream."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    one_mb = compressor.compress(bytes(MB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return one_mb * megabytes + compressor.flush()


def rewrite_member(data: bytes, name: str, **fields: int) -> bytes:
    """`data` with the local and central headers of member `name` patched: method, crc,
    compressed and uncompressed sizes (what a crafted archive can claim)."""
    out = bytearray(data)
    encoded = name.encode()
    for signature, offsets in ((b"PK\x03\x04", dict(method=8, crc=14, compressed=18, size=22)),
                               (b"PK\x01\x02", dict(method=10, crc=16, compressed=20, size=24))):
        start = out.find(signature)
        while start >= 0:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if out[name_at : name_at + len(encoded)] == encoded:
                for field, value in fields.items():
                    width = 2 if field == "method" else 4
                    out[start + offsets[field] : start + offsets[field] + width] = value.to_bytes(width, "little")
            start = out.find(signature, start + 4)
    return bytes(out)


def skip_reason_and_peak(path: Path) -> tuple[str, int]:
    """Why reading `path` is refused, and the most memory Python held while deciding (bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(DocumentError) as refused:
            read_document(path)
        return refused.value.reason, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_docx_that_unpacks_to_a_gigabyte_is_refused_before_it_is_inflated(tmp_path):
    # One megabyte on disk whose document.xml unpacks to a gigabyte of zeros.
    stream = deflated_zeros(1024)
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w") as zf:
        zf.writestr("[Content_Types].xml", CONTENT_TYPES)
        zf.writestr("_rels/.rels", RELS)
        zf.writestr("word/document.xml", stream, compress_type=zipfile.ZIP_STORED)
    bomb = tmp_path / "bomb.docx"
    bomb.write_bytes(rewrite_member(stored.getvalue(), "word/document.xml", method=zipfile.ZIP_DEFLATED,
                                    size=1024 * MB))
    assert bomb.stat().st_size < 2 * MB

    reason, peak = skip_reason_and_peak(bomb)
    assert reason == "unpacks to 1.0 GB, over the limit (104.0 MB)"
    assert peak < 16 * MB


def test_docx_of_empty_paragraphs_is_refused_by_its_ratio(tmp_path):
    # Under the size limit, but 8 MB of <w:p/> from a few kilobytes: python-docx would build
    # millions of paragraph objects (95 MB of them took 1.8 GB).
    bomb = docx_with_body(tmp_path / "blank-pages.docx", 8)
    assert bomb.stat().st_size < 32 * 1024

    reason, peak = skip_reason_and_peak(bomb)
    assert reason.startswith("unpacks to 8.0 MB, ") and reason.endswith(" times its size (over the 100:1 limit)")
    assert peak < 16 * MB


def test_docx_that_declares_less_than_it_holds_is_inflated_a_megabyte_at_a_time(tmp_path):
    # Declared sizes can lie: this document.xml claims 4 KB and holds 64 MB. Reading it whole (as
    # python-docx does, through zipfile) inflates all 64 MB before noticing.
    honest = docx_with_body(tmp_path / "honest.docx", 64)
    liar = tmp_path / "liar.docx"
    liar.write_bytes(rewrite_member(honest.read_bytes(), "word/document.xml", size=4096))

    reason, peak = skip_reason_and_peak(liar)
    assert reason.startswith("broken DOCX: ")
    assert peak < 16 * MB


def test_docx_compressed_with_lzma_is_refused(tmp_path):
    # Word writes deflate only; zipfile inflates LZMA (and bzip2) a whole read at a time, unbounded.
    path = docx_with_body(tmp_path / "lzma.docx", 0, compression=zipfile.ZIP_LZMA)
    with pytest.raises(DocumentError) as refused:
        read_document(path)
    assert refused.value.reason == "broken DOCX: unsupported zip compression (method 14)"


# --------------------------------------------------------------------------- one enormous line


def test_pieces_tokenize_like_the_whole_text():
    from knn_explorer.core.datastore.tokenizing import tokenize_pieces

    tokenizer = load_model("demo").tokenizer
    text = "\n\n".join(
        PARAGRAPHS[name] + "Numbers 12 345 6789, prices $3.50;  two  spaces,\ttabs\r\nand café naïve — dashes."
        for name in sorted(PARAGRAPHS)
    ) * 3
    whole = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)

    pieces = list(tokenize_pieces(tokenizer, [text[:1000], text[1000:1001], text[1001:]], piece_chars=997))

    assert len(pieces) > 5 and max(len(ids) for ids, _ in pieces) < 997
    assert np.concatenate([ids for ids, _ in pieces]).tolist() == whole["input_ids"]
    assert np.concatenate([starts for _, starts in pieces]).tolist() == [s for s, _ in whole["offset_mapping"]]

    # No space to cut at (base64, a run of digits): cut anyway; every character is still there.
    solid = ("QmFzZTY0IGRhdGE=" * 200) + ("0123456789" * 300)
    calls = []
    pieces = list(tokenize_pieces(lambda text, **kw: calls.append(len(text)) or tokenizer(text, **kw), [solid],
                                  piece_chars=997))
    ids = np.concatenate([ids for ids, _ in pieces])
    starts = np.concatenate([starts for _, starts in pieces])
    assert max(calls) <= 997 and tokenizer.decode(ids.tolist()) == solid
    assert starts[0] == 0 and (np.diff(starts) > 0).all()
    assert all(solid[s:].startswith(tokenizer.decode([i])) for s, i in zip(starts.tolist(), ids.tolist()))


class LengthRecordingTokenizer:
    """The real tokenizer, noting how many characters each call hands it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.lengths = tokenizer, []

    def __call__(self, text, **kwargs):
        self.lengths.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


LINE_CHARS = 1_100_000  # two of the reader's megabyte reads, five of the tokenizer's pieces


def test_a_long_single_line_is_read_and_tokenized_in_bounded_pieces(tmp_path, tiny_model, monkeypatch):
    words = PARAGRAPHS["notes/datastore.txt"].replace("\n", " ")
    line = (words * (1 + LINE_CHARS // len(words)))[:LINE_CHARS]
    # Across the seam of the file's megabyte reads: a CRLF, normalised to one newline.
    raw = line.encode("utf-8")
    raw = raw[: MB - 1] + b"\r\n" + raw[MB - 1 :]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "one-line.txt").write_bytes(raw)
    expected_text = raw.decode("utf-8").replace("\r\n", "\n")
    recorder = LengthRecordingTokenizer(tiny_model.tokenizer)
    monkeypatch.setattr(tiny_model, "tokenizer", recorder)
    folder = tmp_path / "store"
    builder = DatastoreBuilder(folder, "one line", tiny_model, [tmp_path / "docs"], PARAMS,
                               should_stop=lambda: (folder / "keys.f16").exists())  # stop once reading is done
    with pytest.raises(Cancelled):
        builder.run()

    assert max(recorder.lengths) <= len(expected_text) / 4  # no tokenizer call sees the whole line
    assert (folder / "texts" / "0.txt").read_bytes().decode("utf-8") == expected_text
    whole = recorder.tokenizer(expected_text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = np.fromfile(folder / "tokens.i32", dtype=np.int32)
    positions = np.fromfile(folder / "positions.i64", dtype=np.int64).reshape(-1, 2)
    assert tokens.tolist() == whole["input_ids"]
    assert positions[:, 1].tolist() == [start for start, _ in whole["offset_mapping"]][1:]
