"""What a damaged or read-only data home, a bad flag or a second attempt does: one-line reasons, nothing lost.

Commands run in process (`knn_explorer.cli.main`) where the process is not the point, and in a
real read-only mount (a user and mount namespace) where it is.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corpus import write_corpus
from knn_explorer.cli import main
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.datastore.library import build_datastore
from knn_explorer.core.models import load_model


@pytest.fixture(scope="module")
def model(tiny_gpt2_dir):
    return load_model(str(tiny_gpt2_dir), device="cpu")


def build(name, model, docs, index="flat", **params):
    catalog = Catalog()
    build_datastore(catalog, name, model, [docs], BuildParameters(context_length=32, stride=16, index=index, **params))
    catalog.engine.dispose()  # a finished command leaves no open connection (and no WAL) behind


@pytest.fixture
def docs(tmp_path):
    return write_corpus(tmp_path / "docs")


def run(capsys, *args):
    """(exit code, stdout, stderr) of one command run in this process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for leak in ("Traceback", "SELECT", "INSERT", "[SQL", "sqlite3."):
        assert leak not in err
    return lines[0]


# ---- 9. damaged datastores ---------------------------------------------------------------------
def _shorten_keys(folder: Path) -> None:
    keys = folder / "keys.f16"
    os.truncate(keys, keys.stat().st_size - 64)


def _drop_dim(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["dim"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _junk_index(folder: Path) -> None:
    (folder / "index.faiss").write_bytes(b"junk" * 1000)


@pytest.mark.parametrize("index, damage, reason", [
    ("flat", _shorten_keys, "keys.f16 is shorter than its manifest says"),
    ("flat", _drop_dim, "lacks the key dimension"),
    ("hnsw", _junk_index, "index.faiss is not a FAISS index"),
])
def test_a_damaged_datastore_is_listed_as_such_and_refused_with_its_reason(capsys, model, docs, tiny_gpt2_dir, index,
                                                                           damage, reason):
    build("notes", model, docs, index=index)
    damage(Path(Catalog().datastore("notes").folder))

    code, out, _ = run(capsys, "list", "--json")
    (store,) = json.loads(out)["datastores"]
    assert code == 0 and store["status"] == "damaged" and reason in store["reason"]
    code, out, _ = run(capsys, "list")
    assert "DAMAGED" in out and reason in out

    code, _, err = run(capsys, "generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--prompt", "The fox")
    line = one_line_error(err)
    assert code == 1 and "datastore 'notes' is damaged (" in line and reason in line and "build it again" in line


def test_a_faiss_index_that_cannot_be_read_is_a_one_line_reason(model, docs):
    from knn_explorer.core.datastore.folder import DatastoreError
    from knn_explorer.core.datastore.library import open_datastore

    build("notes", model, docs, index="hnsw")
    index = Path(Catalog().datastore("notes").folder) / "index.faiss"
    index.write_bytes(b"IHNf" + b"\x00" * 64)  # starts like an index, then nothing FAISS can read
    with pytest.raises(DatastoreError, match="index.faiss is not a readable FAISS index"):
        open_datastore(Catalog(), "notes", model)


# ---- 10. a damaged catalog ---------------------------------------------------------------------
def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _damaged_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096 + 8:4096 + 400] = b"\xff" * 392  # the second page's header and cell pointers
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_random_bytes, _damaged_page])
def test_a_damaged_catalog_is_named_and_rebuilt_from_the_datastore_folders(capsys, data_home, model, docs, tmp_path,
                                                                            tiny_gpt2_dir, damage):
    build("notes", model, docs)
    damage(data_home / "catalog.sqlite")
    folders_before = sorted((data_home / "datastores").iterdir())

    code, _, err = run(capsys, "list")
    line = one_line_error(err)
    assert code == 1 and "catalog" in line and "damaged" in line and "rebuild-catalog" in line
    # A build refuses before doing any work, instead of failing to save it at the end.
    code, _, err = run(capsys, "build", "--name", "more", "--model", tiny_gpt2_dir, "--docs", docs)
    assert code == 1 and "rebuild-catalog" in one_line_error(err)
    assert sorted((data_home / "datastores").iterdir()) == folders_before

    code, out, _ = run(capsys, "rebuild-catalog", "--json")
    report = json.loads(out)
    assert code == 0 and report["datastores"] == ["notes"]
    (aside,) = [Path(p) for p in report["kept_aside"] if p.endswith(tuple("0123456789"))]
    assert aside.exists() and aside.name.startswith("catalog.sqlite.damaged-")

    code, out, _ = run(capsys, "list", "--json")
    (store,) = json.loads(out)["datastores"]
    assert store["status"] == "complete" and {Path(d["path"]).name for d in store["documents"]} == {
        "routing.md", "datastore.txt", "fox.rst"}
    code, out, _ = run(capsys, "generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--prompt", "The fox",
                       "--max-new-tokens", 1, "--json")
    assert code == 0 and json.loads(out)["neighbours"]


def test_the_app_offers_to_rebuild_a_damaged_catalog(qtbot, data_home, model, docs):
    from knn_explorer.gui.dialogs.catalog_repair import open_catalog

    build("notes", model, docs)
    _random_bytes(data_home / "catalog.sqlite")
    asked = []
    assert open_catalog(confirm=lambda reason: asked.append(reason) or False, fail=pytest.fail) is None
    assert "damaged" in asked[0] and "SELECT" not in asked[0]
    catalog = open_catalog(confirm=lambda reason: True, fail=pytest.fail)
    assert [row.name for row in catalog.datastores()] == ["notes"]
    assert list(data_home.glob("catalog.sqlite.damaged-*"))


# ---- 8 and 7. a read-only data home ------------------------------------------------------------
def _read_only_runner():
    """A command runner in a namespace where the data home is a read-only mount, or None."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        return None

    def run_read_only(home: Path, *args):
        script = f'mount --bind "{home}" "{home}" && mount -o remount,bind,ro "{home}" && exec "$@"'
        return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-m", "knn_explorer.cli",
                               *map(str, args)], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                              env={**os.environ, "KNN_EXPLORER_HOME": str(home)})
    return run_read_only


run_read_only = _read_only_runner()


@pytest.mark.slow  # four real processes, each loading torch and the model
@pytest.mark.skipif(run_read_only is None, reason="needs unprivileged user and mount namespaces")
def test_a_read_only_home_can_be_read_and_a_result_is_printed_before_the_catalog_refuses_it(data_home, model, docs,
                                                                                          tmp_path, tiny_gpt2_dir):
    build("notes", model, docs)
    proc = run_read_only(data_home, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [d["name"] for d in json.loads(proc.stdout)["datastores"]] == ["notes"]

    proc = run_read_only(data_home, "generate", "--model", tiny_gpt2_dir, "--datastore", "notes", "--prompt", "The fox",
                         "--max-new-tokens", 2, "--json")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2

    held_out = tmp_path / "heldout.txt"
    held_out.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    proc = run_read_only(data_home, "eval", "--model", tiny_gpt2_dir, "--datastore", "notes", "--text", held_out,
                         "--context", 32, "--stride", 16, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ppl"] > 0
    (warning,) = proc.stderr.strip().splitlines()
    assert "not kept" in warning and "read-only" in warning

    proc = run_read_only(data_home, "sweep", "--model", tiny_gpt2_dir, "--datastore", "notes", "--text", held_out,
                         "--param", "lambda", "--values", "0,0.5", "--context", 32, "--stride", 16, "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["results"]) == 2
    assert "read-only" in proc.stderr


def test_train_gates_checks_its_output_path_before_loading_anything(capsys, tmp_path, docs):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    folder = tmp_path / "gates.safetensors"
    folder.mkdir()
    for out, words in ((folder, "is a folder"), (not_a_folder / "gates.safetensors", "is not a folder")):
        code, _, err = run(capsys, "train-gates", "--model", tmp_path / "no-such-model", "--docs", docs, "--out", out)
        assert code == 2 and words in one_line_error(err)


# ---- 11. repeated attempts, bad flags, look-alike names ----------------------------------------
def test_a_build_that_failed_twice_is_listed_once_and_removed_as_one_folder(capsys, model, docs):
    def fail_while_encoding(progress):
        if progress.phase == "encoding":
            raise RuntimeError("disk unplugged")

    for _attempt in range(2):
        with pytest.raises(RuntimeError):
            build_datastore(Catalog(), "notes", model, [docs], BuildParameters(context_length=32, stride=16),
                            on_progress=fail_while_encoding)
    code, out, _ = run(capsys, "list", "--json")
    (unfinished,) = json.loads(out)["unfinished_builds"]
    assert unfinished["status"] == "failed" and "disk unplugged" in unfinished["error"]
    code, out, _ = run(capsys, "remove", "notes")
    assert code == 0 and "(1 folder deleted)" in out


@pytest.mark.parametrize("args, flag", [
    (["generate", "--model", "demo", "--prompt", "x", "--neighbours", "-1"], "--neighbours"),
    (["eval", "--model", "demo", "--text", "x", "--stride", "0"], "--stride"),
    (["eval", "--model", "demo", "--text", "x", "--stride", "-5"], "--stride"),
    (["sweep", "--model", "no-such-model", "--text", "x", "--datastore", "d", "--param", "k", "--values", "1",
      "--temperature", "0"], "--temperature"),
    (["sweep", "--model", "no-such-model", "--text", "x", "--datastore", "d", "--param", "k", "--values", "1",
      "--k", "0"], "--k"),
    (["sweep", "--model", "no-such-model", "--text", "x", "--datastore", "d", "--param", "k", "--values", "1",
      "--lambda", "1.5"], "--lambda"),
])
def test_a_flag_out_of_range_is_refused_before_any_model_is_loaded(capsys, args, flag):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    _, err = capsys.readouterr()
    assert exit_.value.code == 2 and flag in one_line_error(err)


def test_names_that_differ_only_by_surrounding_spaces_are_one_datastore(capsys, model, docs, tiny_gpt2_dir):
    build("notes", model, docs)
    code, _, err = run(capsys, "build", "--name", "notes ", "--model", tiny_gpt2_dir, "--docs", docs)
    assert code == 1 and "already exists" in one_line_error(err)
    code, out, _ = run(capsys, "list", "--json")
    assert [d["name"] for d in json.loads(out)["datastores"]] == ["notes"]


def test_a_k_sweep_beyond_the_datastore_is_refused_before_the_model_pass(capsys, monkeypatch, model, docs, tmp_path,
                                                                         tiny_gpt2_dir):
    import knn_explorer.core.evaluation.sweeps as sweeps

    build("notes", model, docs)
    held_out = tmp_path / "heldout.txt"
    held_out.write_text("The quick brown fox jumps over the lazy dog. " * 8)
    monkeypatch.setattr(sweeps, "collect", lambda *a, **k: pytest.fail("the model ran before the values were checked"))
    code, _, err = run(capsys, "sweep", "--model", tiny_gpt2_dir, "--datastore", "notes", "--text", held_out,
                       "--param", "k", "--values", "1,1e9")
    assert code == 2 and "more than the" in one_line_error(err) and "'notes'" in err
