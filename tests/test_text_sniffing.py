"""Plain-text files without a usual extension (LICENSE-2.0, LGPL-2.1, README) are indexed by content."""
import codecs

from knn_explorer.core.datastore.documents import discover, read_document

PROSE = "Licensed under the Apache License, Version 2.0. You may not use this file except in compliance.\n"


def test_text_without_a_usual_extension_is_read_and_binary_is_not(tmp_path):
    (tmp_path / "Apache-2.0").write_text(PROSE * 20, encoding="utf-8")  # suffix ".0"
    (tmp_path / "LGPL-2.1").write_text(PROSE, encoding="utf-8")  # suffix ".1"
    (tmp_path / "README").write_text("Café notes ✓\n" + PROSE, encoding="utf-8")  # no suffix, UTF-8
    (tmp_path / "notes.cfg").write_bytes(codecs.BOM_UTF16_LE + PROSE.encode("utf-16-le"))
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "blank.dat").write_bytes(b"   \n")
    files, skipped = discover([tmp_path])
    assert sorted(p.name for p in files) == ["Apache-2.0", "LGPL-2.1", "README", "notes.cfg"]
    assert {s.path.name: s.reason for s in skipped} == {
        "blob.bin": "unsupported file type .bin", "image.png": "unsupported file type .png",
        "blank.dat": "unsupported file type .dat"}
    readme = read_document(tmp_path / "README")
    assert readme.kind == "text" and readme.text.startswith("Café notes ✓")
    assert "Apache License" in read_document(tmp_path / "notes.cfg").text


def test_a_multibyte_character_cut_by_the_sniffed_block_is_still_text(tmp_path):
    from knn_explorer.core.datastore.documents import SNIFF_BYTES

    text = "a" * (SNIFF_BYTES - 1) + "é" + " more text\n"  # é straddles the block's end
    (tmp_path / "LICENSE").write_text(text, encoding="utf-8")
    files, skipped = discover([tmp_path])
    assert [p.name for p in files] == ["LICENSE"] and not skipped
    assert read_document(tmp_path / "LICENSE").text == text
