"""A fuzz-style build over generated folders of hostile files.

The invariant, whatever the folder holds: the build finishes; every file is either indexed or
listed as skipped with a one-line reason; nothing prints a traceback; and afterwards the catalog,
the datastore folder and its JSON files agree (strict UTF-8 everywhere).
"""
import json
import os
import random
import zipfile
from pathlib import Path

import pytest

from corpus import PARAGRAPHS
from knn_explorer.cli import main
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.folder import damage, read_manifest
from knn_explorer.core.datastore.documents import path_text
from knn_explorer.core.datastore.library import open_datastore
from knn_explorer.core.models import load_model

SENTENCES = [text.splitlines()[0] for text in PARAGRAPHS.values()]


def _prose(rng: random.Random, sentences: int = 12) -> str:
    return " ".join(rng.choice(SENTENCES) for _ in range(sentences))


def _docx(path: Path, document_xml: bytes) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"><Override PartName="/word/document.xml" ContentType="application/'
                   'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/'
                   'officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>')
        z.writestr("word/document.xml", document_xml)


# Each kind writes one entry named after `stem` inside `folder` (a str or bytes path).
def plain(folder, stem, rng):
    (folder / f"{stem}.txt").write_text(_prose(rng), encoding="utf-8")


def markdown_crlf_emoji_rtl(folder, stem, rng):
    (folder / f"{stem}.md").write_bytes(f"# Notes 🦊\r\n\r\n{_prose(rng)}\r\nשלום עולם \u202e reversed\r\n".encode())


def latin1(folder, stem, rng):
    (folder / f"{stem}.txt").write_bytes(("Café crème, naïve façade. " + _prose(rng)).encode("latin-1"))


def utf16(folder, stem, rng):
    (folder / f"{stem}.txt").write_text(_prose(rng), encoding="utf-16")


def nul_and_control_bytes(folder, stem, rng):
    (folder / f"{stem}.txt").write_bytes(_prose(rng).encode() + b"\x00\x01\x1b[31m" + _prose(rng).encode())


def empty(folder, stem, rng):
    (folder / f"{stem}.txt").write_bytes(b"")


def binary(folder, stem, rng):
    (folder / f"{stem}.txt").write_bytes(bytes(rng.randrange(256) for _ in range(4096)))


def undecodable_name(folder, stem, rng):
    name = os.fsencode(str(folder)) + b"/" + stem.encode() + b"-caf\xe9-\xff.txt"
    with open(name, "wb") as f:
        f.write(_prose(rng).encode())


def newline_in_name(folder, stem, rng):
    (folder / f"{stem}\nsecond line.txt").write_text(_prose(rng))


def long_name(folder, stem, rng):
    (folder / (stem + "-" + "n" * 200 + ".txt")).write_text(_prose(rng))


def one_long_line(folder, stem, rng):
    (folder / f"{stem}.txt").write_text("x" * 20_000)  # one token per character here: 20k tokens


def zip_bomb_docx(folder, stem, rng):
    _docx(folder / f"{stem}.docx", b"<w:document><w:body>" + b"<w:p/>" * 4_000_000 + b"</w:body></w:document>")


def corrupt_docx(folder, stem, rng):
    (folder / f"{stem}.docx").write_bytes(b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(2000)))


def corrupt_pdf(folder, stem, rng):
    (folder / f"{stem}.pdf").write_bytes(b"%PDF-1.4\n" + bytes(rng.randrange(256) for _ in range(2000)))


def script_only_html(folder, stem, rng):
    (folder / f"{stem}.html").write_text("<html><head><script>var x = 1;</script><style>p{}</style></head></html>")


def symlink_loop(folder, stem, rng):
    os.symlink(folder / f"{stem}-b.txt", folder / f"{stem}-a.txt")
    os.symlink(folder / f"{stem}-a.txt", folder / f"{stem}-b.txt")


def dangling_symlink(folder, stem, rng):
    os.symlink(folder / "nowhere.txt", folder / f"{stem}.txt")


def duplicate_symlink(folder, stem, rng):
    target = folder / f"{stem}-target.txt"
    target.write_text(_prose(rng))
    os.symlink(target, folder / f"{stem}-link.txt")


def fifo(folder, stem, rng):
    os.mkfifo(folder / f"{stem}.txt")


def folder_named_like_a_file(folder, stem, rng):
    inner = folder / f"{stem}.txt"
    inner.mkdir()
    (inner / "inside.md").write_text(_prose(rng))


def unsupported(folder, stem, rng):
    (folder / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)


def over_the_size_limit(folder, stem, rng):
    (folder / f"{stem}.txt").write_text("word " * 300_000)  # 1.5 MB against --max-file-mb 1


def hidden(folder, stem, rng):
    (folder / f".{stem}.txt").write_text(_prose(rng))


KINDS = [plain, markdown_crlf_emoji_rtl, latin1, utf16, nul_and_control_bytes, empty, binary, undecodable_name,
         newline_in_name, long_name, one_long_line, zip_bomb_docx, corrupt_docx, corrupt_pdf, script_only_html,
         symlink_loop, dangling_symlink, duplicate_symlink, fifo, folder_named_like_a_file, unsupported,
         over_the_size_limit, hidden]


def hostile_folder(root: Path, seed: int, count: int = 28) -> Path:
    rng = random.Random(seed)
    folders = [root, root / "sub", root / "sub" / "deeper"]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    plain(root, "anchor", rng)  # at least one usable document
    kinds = KINDS + [rng.choice(KINDS) for _ in range(count - len(KINDS))]
    rng.shuffle(kinds)
    for number, kind in enumerate(kinds):
        kind(rng.choice(folders), f"{kind.__name__}-{number}", rng)
    return root


def entries_a_user_sees(root: Path) -> list[Path]:
    """Every non-hidden entry a build is asked about: files, links, FIFOs (not the folders)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / d for d in dirs if os.path.islink(Path(folder) / d)]
        found += [Path(folder) / f for f in files if not f.startswith(".")]
    return found


def assert_strict_text(value, where: str) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # raises on lone surrogates
    elif isinstance(value, dict):
        for k, v in value.items():
            assert_strict_text(k, where)
            assert_strict_text(v, where)
    elif isinstance(value, list):
        for v in value:
            assert_strict_text(v, where)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_any_hostile_folder_builds_and_accounts_for_every_file(capsys, tmp_path, tiny_gpt2_dir, seed):
    root = hostile_folder(tmp_path / "docs", seed)
    code = main(["build", "--name", f"hostile-{seed}", "--model", str(tiny_gpt2_dir), "--docs", str(root),
                 "--context", "32", "--stride", "16", "--max-file-mb", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and "Traceback" not in err and "error" not in err, err
    report = json.loads(out)

    indexed = {d["path"] for d in report["documents"]}
    skipped = {s["path"]: s["reason"] for s in report["skipped"]}
    assert not indexed & set(skipped)
    assert all(reason and "\n" not in reason for reason in skipped.values())
    for entry in entries_a_user_sees(root):
        named = path_text(entry) in indexed or path_text(entry) in skipped
        duplicate = entry.is_symlink() and entry.exists() and path_text(entry.resolve()) in indexed
        assert named or duplicate, f"{entry!r} is neither indexed nor skipped"
    assert path_text(root / "anchor.txt") in indexed

    # The catalog says what the build said.
    listing = json.loads(main(["list", "--json"]) == 0 and capsys.readouterr().out)
    (store,) = listing["datastores"]
    assert store["status"] == "complete" and listing["unfinished_builds"] == []
    assert {d["path"] for d in store["documents"] if d["status"] == "indexed"} == indexed
    assert {d["path"]: d["reason"] for d in store["documents"] if d["status"] == "skipped"} == skipped

    # The folder agrees with its manifest, its JSON is strict UTF-8, and it can be used.
    folder = Path(report["folder"])
    manifest = read_manifest(folder)
    assert manifest["state"] == "complete" and damage(folder, manifest) is None
    for name in ("manifest.json", "skipped.json"):
        assert_strict_text(json.loads((folder / name).read_bytes().decode("utf-8")), name)
    lines = (folder / "documents.jsonl").read_bytes().decode("utf-8").splitlines()
    assert len(lines) == len(indexed)
    for line in lines:
        assert_strict_text(json.loads(line), "documents.jsonl")
    datastore = open_datastore(Catalog(), f"hostile-{seed}", load_model(str(tiny_gpt2_dir), device="cpu"))
    _document, _offset, passage, _span = datastore.passage(datastore.size - 1, 1)
    assert passage
