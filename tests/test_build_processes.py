"""Builds in separate processes, as a user starts them: two at once, a SIGKILL, a resume.

The first build is frozen with SIGSTOP once it holds its datastore's lock and is encoding, so the
second command meets a build that is really in progress, however fast the machine is.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus import write_corpus
from knn_explorer.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP / SIGKILL")


def start_build(name, model_dir, docs):
    return subprocess.Popen(
        [sys.executable, "-m", "knn_explorer.cli", "build", "--name", name, "--model", str(model_dir),
         "--docs", str(docs), "--context", "32", "--stride", "16", "--batch-size", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def refused(capsys, *args) -> str:
    """The one-line reason this process's command gives for refusing (the build runs in another)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def listing(capsys) -> dict:
    assert main(["list", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def freeze_while_encoding(process, home: Path) -> None:
    """Wait until `process` holds its lock and is encoding, then stop it there."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        owners = [json.loads(p.read_text()) for p in (home / "locks").glob("*.owner.json")] \
            if (home / "locks").exists() else []
        states = [json.loads(p.read_text()).get("state") for p in (home / "datastores").glob("*/manifest.json")]
        if any(o["pid"] == process.pid for o in owners) and "encoding" in states:
            process.send_signal(signal.SIGSTOP)
            return
        time.sleep(0.005)
    raise AssertionError("the build never reached its encoding phase")


@pytest.fixture
def big_docs(tmp_path):
    """Enough text that encoding one window at a time outlasts the test's 5 ms polling many times over."""
    docs = write_corpus(tmp_path / "big")
    for n in range(12):
        (docs / f"extra-{n}.txt").write_text(f"Document {n}. " + "The quick brown fox jumps. " * 60)
    return docs


def test_a_second_build_of_a_running_name_is_refused_and_a_killed_build_resumes(capsys, tmp_path, data_home,
                                                                                 tiny_gpt2_dir, big_docs):
    other = write_corpus(tmp_path / "other")
    first = start_build("mix", tiny_gpt2_dir, big_docs)
    try:
        freeze_while_encoding(first, data_home)
        # Another build of the same name (other documents), its resume, and its removal: refused at once.
        for args in (["build", "--name", "mix", "--model", tiny_gpt2_dir, "--docs", other],
                     ["build", "--name", "mix ", "--model", tiny_gpt2_dir, "--docs", big_docs],
                     ["remove", "mix"]):
            reason = refused(capsys, *args)
            assert "'mix' is being built" in reason and f"process {first.pid}" in reason
        assert [b["status"] for b in listing(capsys)["unfinished_builds"]] == ["building"]
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()

    # The dead build's lock blocks nothing: the same build resumes its folder; two resumes collide.
    second = start_build("mix", tiny_gpt2_dir, big_docs)
    try:
        freeze_while_encoding(second, data_home)
        assert "'mix' is being built" in refused(capsys, "build", "--name", "mix", "--model", tiny_gpt2_dir,
                                                 "--docs", big_docs)
        second.send_signal(signal.SIGCONT)
        out, err = second.communicate(timeout=300)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, err
    assert json.loads(out)["resumed_from"] == "encoding"

    after = listing(capsys)
    (store,) = after["datastores"]
    assert store["name"] == "mix" and store["status"] == "complete" and after["unfinished_builds"] == []
    assert len(list((data_home / "datastores").iterdir())) == 1
    # A complete datastore is never rewritten by another build of its name.
    assert "already exists" in refused(capsys, "build", "--name", "mix", "--model", tiny_gpt2_dir, "--docs", other)
    assert main(["generate", "--model", str(tiny_gpt2_dir), "--datastore", "mix", "--prompt", "The quick brown",
                 "--max-new-tokens", "2", "--json"]) == 0
    assert all(json.loads(line)["neighbours"] for line in capsys.readouterr().out.splitlines())


def test_the_app_refuses_a_name_that_the_cli_is_building(qtbot, data_home, tiny_gpt2_dir, big_docs):
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.models import load_model
    from knn_explorer.gui.dialogs.build import BuildDialog

    build = start_build("shared", tiny_gpt2_dir, big_docs)
    try:
        freeze_while_encoding(build, data_home)
        dialog = BuildDialog(Catalog(), load_model(str(tiny_gpt2_dir), device="cpu"))
        qtbot.addWidget(dialog)
        dialog.add_sources([str(big_docs)])
        dialog.name_edit.setText("shared")
        problem = dialog.start_problem()
        assert problem is not None and "'shared' is being built" in problem and f"process {build.pid}" in problem
        assert dialog.start_build() is None  # refused in the app, nothing started
    finally:
        build.kill()
        build.wait()
