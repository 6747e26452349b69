"""Cluster builds and sharded datastores on a real local Ray cluster (2 CPUs): the demo documents
built on 2 shards hold exactly the single-machine build's entries, and generation, eval and the
inspector's sources read the same neighbours from them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import cli_helpers  # noqa: E402
from knn_explorer.core.cluster.shard_plan import plan_shards  # noqa: E402
from knn_explorer.core.datastore.builder import BuildParameters  # noqa: E402
from knn_explorer.core.datastore.catalog import Catalog  # noqa: E402
from knn_explorer.core.datastore.folder import DatastoreError  # noqa: E402
from knn_explorer.core.datastore.library import build_datastore, open_datastore, unfinished_build  # noqa: E402
from knn_explorer.core.home import DEMO_DOCS_DIR as DEMO_DOCS, RESOURCES  # noqa: E402
from knn_explorer.core.progress import Interrupted  # noqa: E402

HELDOUT = RESOURCES / "demo" / "heldout" / "installation.rst"


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20,
             namespace="knn-explorer", logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def demo_builds(local_cluster, tmp_path_factory):
    """The demo documents built here ("one") and on the local cluster in 2 shards ("two"), in one home."""
    home = tmp_path_factory.mktemp("cluster-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KNN_EXPLORER_HOME", str(home))
        one = json.loads(cli_helpers.cli("build", "--name", "one", "--model", "demo", "--docs", DEMO_DOCS,
                                         "--index", "flat", "--json").stdout)
        two = json.loads(cli_helpers.cli("build", "--name", "two", "--model", "demo", "--docs", DEMO_DOCS,
                                         "--index", "flat", "--cluster", "local", "--shards", 2, "--encoders", 2,
                                         "--json").stdout)
    return home, one, two


@pytest.fixture
def in_cluster_home(demo_builds, monkeypatch):
    monkeypatch.setenv("KNN_EXPLORER_HOME", str(demo_builds[0]))
    return demo_builds


@pytest.fixture
def opened(in_cluster_home):
    from knn_explorer.core.models import load_model

    model = load_model("demo", device="cpu")
    catalog = Catalog()
    return model, catalog, open_datastore(catalog, "one", model), open_datastore(catalog, "two", model)


def test_shard_plans_are_contiguous_balanced_and_never_empty():
    plan = plan_shards([8] * 9 + [3], 3)
    assert [s.first_entry for s in plan] == [0, 24, 48] and sum(s.entries for s in plan) == 75
    assert all(a.end_batch == b.first_batch for a, b in zip(plan, plan[1:])) and plan[-1].end_batch == 10
    assert len(plan_shards([5, 5], 4)) == 2  # never more shards than batches
    with pytest.raises(ValueError):
        plan_shards([5], 0)


@pytest.mark.slow
def test_cluster_build_holds_the_single_machine_build_entries(opened, in_cluster_home):
    _model, catalog, one, two = opened
    _home, one_summary, two_summary = in_cluster_home
    assert two_summary["shards"] == 2 and two_summary["cluster"] == "local"
    assert two.size == one.size == one_summary["entries"] > 50_000
    row = catalog.datastore("two")
    assert (row.cluster, row.shards) == ("local", 2) and Path(row.folder).is_dir()
    keys_one = np.asarray(one.keys[:], dtype=np.float32)
    keys_two = two.keys[np.arange(two.size)].astype(np.float32)
    np.testing.assert_allclose(keys_two, keys_one, rtol=2**-10, atol=1e-3)  # fp16 rounding at most
    assert np.array_equal(np.asarray(two.values), np.asarray(one.values))
    assert np.array_equal(np.asarray(two.positions), np.asarray(one.positions))
    # each shard is a datastore of its own, in the single-machine format
    shard = Path(row.folder) / "shards" / "001"
    assert {"keys.f16", "values.i32", "positions.i64", "manifest.json"} <= {p.name for p in shard.iterdir()}
    listing = json.loads(cli_helpers.cli("list", "--json").stdout)
    assert {d["name"]: d["location"] for d in listing["datastores"]} == {"one": "this machine",
                                                                        "two": "Ray 'local' · 2 shards"}


@pytest.mark.slow
def test_eval_and_generation_read_the_same_neighbours_as_the_local_datastore(opened, in_cluster_home):
    _model, _catalog, one, two = opened
    queries = np.asarray(one.keys[::4099], dtype=np.float32) + 0.01
    d_one, i_one = one.search(queries, 32)
    d_two, i_two = two.search(queries, 32)
    assert np.array_equal(i_one, i_two)
    np.testing.assert_allclose(d_two, d_one, rtol=1e-6)
    shards = {two.shard_of(int(i)) for i in i_two.ravel()}
    assert shards == {0, 1}  # both shards answered

    def evaluated(name):
        return json.loads(cli_helpers.cli("eval", "--model", "demo", "--datastore", name, "--text", HELDOUT,
                                          "--lambda", "0.4", "--temperature", "16", "--json").stdout)

    local, sharded = evaluated("one"), evaluated("two")
    assert sharded["tokens"] == local["tokens"] > 500
    assert abs(sharded["ppl"] - local["ppl"]) <= 1e-6 * local["ppl"] and sharded["ppl"] < local["ppl_lm"]

    def generated(name):
        out = cli_helpers.cli("generate", "--model", "demo", "--datastore", name, "--prompt", "Flask is",
                              "--max-new-tokens", 4, "--greedy", "--json").stdout
        return [json.loads(line) for line in out.splitlines()]

    for a, b in zip(generated("one"), generated("two"), strict=True):
        assert a["token"] == b["token"]
        assert [(n["document"], n["offset"], n["distance"]) for n in a["neighbours"]] == \
               [(n["document"], n["offset"], n["distance"]) for n in b["neighbours"]]
        assert all(n["shard"] is None for n in a["neighbours"]) and all(n["shard"] in (0, 1) for n in b["neighbours"])


@pytest.mark.slow
def test_a_killed_retrieval_actor_is_restarted_and_a_lost_one_is_named(opened):
    from knn_explorer.core.evaluation.perplexity import evaluate
    from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
    from knn_explorer.core.methods import Resources
    from knn_explorer.core.methods.knnlm import KnnLmMethod

    model, _catalog, _one, two = opened
    text = HELDOUT.read_text(encoding="utf-8")[:3000]
    method = KnnLmMethod(model, KnnLmSettings(k=16, lambda_=0.4), Resources(two))
    reference = evaluate(model, text, method, context_length=64, stride=32).ppl
    first = ray.get(two.actors[1].process_id.remote())
    killed = []

    def kill_once(progress):
        if not killed and progress.done > 0:
            killed.append(ray.kill(two.actors[1], no_restart=False))  # Ray restarts it, the call is retried

    again = evaluate(model, text, method, context_length=64, stride=32, on_progress=kill_once)
    assert killed and again.ppl == pytest.approx(reference, rel=1e-9)
    assert ray.get(two.actors[1].process_id.remote()) != first  # a new process answered
    ray.kill(two.actors[1], no_restart=True)
    with pytest.raises(DatastoreError, match=r"shard 1 of datastore 'two' did not answer"):
        evaluate(model, text, method, context_length=64, stride=32)


@pytest.mark.slow
def test_a_killed_cluster_build_resumes_shard_by_shard(local_cluster, tiny_gpt2_dir, tmp_path):
    from corpus import write_corpus
    from knn_explorer.core.models import load_model

    model = load_model(str(tiny_gpt2_dir), device="cpu")
    catalog = Catalog()
    docs = write_corpus(tmp_path / "docs")
    params = BuildParameters(context_length=32, stride=16, batch_size=4, index="ivfpq", cluster="local",
                             shards=3, encoders=1)

    def stop_after_first_shard(progress):
        folder = next(Path(os.environ["KNN_EXPLORER_HOME"], "datastores").iterdir())
        first = folder / "shards" / "000" / "manifest.json"
        if progress.phase == "encoding" and first.exists() and json.loads(first.read_text())["state"] == "indexing":
            raise Interrupted("stopped like a killed process")

    with pytest.raises(Interrupted):
        build_datastore(catalog, "resumed", model, [docs], params, on_progress=stop_after_first_shard)
    folder = next(Path(os.environ["KNN_EXPLORER_HOME"], "datastores").iterdir())
    interrupted = unfinished_build(catalog, "resumed")
    assert interrupted.parameters.cluster == "local" and interrupted.state == "encoding"
    assert 0 < interrupted.fraction < 1  # the finished shard counts, the rest does not
    first_keys = folder / "shards" / "000" / "keys.f16"
    written = first_keys.stat().st_mtime_ns
    report = build_datastore(catalog, "resumed", model, [docs], params)
    assert report.resumed_from == "encoding"
    assert first_keys.stat().st_mtime_ns == written  # the finished shard was not encoded again
    resumed = open_datastore(catalog, "resumed", model)
    whole = build_datastore(catalog, "whole", model, [docs], BuildParameters(context_length=32, stride=16,
                                                                             batch_size=4, index="flat"))
    reference = open_datastore(catalog, "whole", model)
    assert resumed.size == whole.manifest["entries"]
    np.testing.assert_allclose(resumed.keys[np.arange(resumed.size)].astype(np.float32),
                               np.asarray(reference.keys[:], dtype=np.float32), rtol=2**-10, atol=1e-3)
    # the shards share one trained IVF-PQ: the same coarse centroids in each
    import faiss
    indexes = [faiss.read_index(str(folder / "shards" / f"{n:03d}" / "index.faiss")) for n in range(3)]
    quantizers = [faiss.downcast_index(faiss.extract_index_ivf(index).quantizer) for index in indexes]
    centroids = [q.reconstruct_n(0, q.ntotal) for q in quantizers]
    assert len(centroids[0]) > 1
    assert all(np.array_equal(centroids[0], c) for c in centroids[1:])


def test_nothing_imports_ray_until_a_cluster_is_used():
    code = ("import sys, knn_explorer.cli, knn_explorer.core.datastore.library, knn_explorer.gui.main_window; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.slow
def test_the_build_dialog_builds_on_the_cluster_and_the_app_shows_where_it_lives(qtbot, local_cluster, tiny_gpt2_dir,
                                                                                  tmp_path):
    from PySide6.QtCore import Qt

    from corpus import write_corpus
    from knn_explorer.core.models import load_model
    from knn_explorer.core.records import Neighbour
    from knn_explorer.gui.dialogs.build import RAY, BuildDialog
    from knn_explorer.gui.pages.library import INDEX, CatalogView
    from knn_explorer.gui.widgets.neighbour_table import NeighbourTable, NeighbourTableModel

    catalog = Catalog()
    dialog = BuildDialog(catalog, load_model(str(tiny_gpt2_dir), device="cpu"))
    qtbot.addWidget(dialog)
    dialog.show()
    dialog.add_sources([str(write_corpus(tmp_path / "docs"))])
    dialog.name_edit.setText("sharded")
    dialog.context_spin.setValue(32)
    dialog.stride_spin.setValue(16)
    assert not dialog.cluster_shown()
    dialog.device_combo.setCurrentIndex(dialog.device_combo.findData(RAY))
    assert dialog.cluster_shown()
    dialog.cluster_edit.setText("local")
    dialog.shards_spin.setValue(2)
    dialog.pca_spin.setValue(8)
    assert "not available for cluster builds" in dialog.start_problem()
    assert not dialog.start_button.isEnabled() and "not available for cluster builds" in dialog.message.text()
    dialog.pca_spin.setValue(0)
    assert dialog.start_problem() is None and dialog.start_button.isEnabled()
    assert (dialog.parameters().cluster, dialog.parameters().shards) == ("local", 2)
    qtbot.mouseClick(dialog.start_button, Qt.MouseButton.LeftButton)
    assert "on Ray cluster “local”, 2 shards" in dialog.details_label.text()
    with qtbot.waitSignal(dialog.tracker.finished, timeout=180_000):
        pass
    row = catalog.datastore("sharded")
    assert (row.cluster, row.shards) == ("local", 2)

    view = CatalogView(catalog)
    qtbot.addWidget(view)
    item = next(view.tree.topLevelItem(i) for i in range(view.tree.topLevelItemCount())
                if view.tree.topLevelItem(i).text(0) == "sharded")
    assert item.text(INDEX).endswith("Ray ×2") and "Ray cluster “local” in 2 shards" in item.toolTip(INDEX)

    table = NeighbourTable()
    qtbot.addWidget(table)
    neighbour = dict(rank=1, token="x", token_id=1, distance=1.0, weight=1.0, document="/d.txt", offset=0,
                     context="x", highlight=(0, 1))
    table.set_neighbours([Neighbour(**neighbour)])
    assert table.isColumnHidden(NeighbourTableModel.SHARD)  # a local datastore: no shard column
    table.set_neighbours([Neighbour(**neighbour, shard=1)])
    assert not table.isColumnHidden(NeighbourTableModel.SHARD)
    assert table.model().index(0, NeighbourTableModel.SHARD).data() == "1"


@pytest.mark.slow
def test_cancelling_a_cluster_build_keeps_nothing(local_cluster, tiny_gpt2_dir, tmp_path):
    from corpus import write_corpus
    from knn_explorer.core.models import load_model
    from knn_explorer.core.progress import Cancelled

    catalog = Catalog()
    params = BuildParameters(context_length=32, stride=16, batch_size=2, cluster="local", shards=2, encoders=1)
    encoded = []
    with pytest.raises(Cancelled):
        build_datastore(catalog, "cancelled", load_model(str(tiny_gpt2_dir), device="cpu"),
                        [write_corpus(tmp_path / "docs")], params,
                        on_progress=lambda p: encoded.append(p.done) if p.phase == "encoding" else None,
                        should_stop=lambda: any(encoded))
    assert catalog.datastore("cancelled") is None
    assert not any(Path(os.environ["KNN_EXPLORER_HOME"], "datastores").iterdir())  # the folder is gone


def test_cluster_build_refusals_are_one_line_and_write_nothing(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("some words to index " * 20)
    url = cli_helpers.cli("build", "--name", "x", "--model", "demo", "--docs", docs, "--cluster", "local",
                          "--storage", "s3://bucket/knn", check=False)
    assert url.returncode != 0 and "mount 's3://bucket/knn'" in url.stderr and len(url.stderr.strip().splitlines()) == 1
    compressed = cli_helpers.cli("build", "--name", "x", "--model", "demo", "--docs", docs, "--cluster", "local",
                                 "--pca", 8, check=False)
    assert compressed.returncode != 0 and "PCA and pruning are not available for cluster builds" in compressed.stderr
    catalog = Catalog()
    assert catalog.datastore("x") is None and not catalog.unfinished_builds("x")  # nothing recorded
    datastores = Path(os.environ["KNN_EXPLORER_HOME"]) / "datastores"
    assert not datastores.exists() or not any(datastores.iterdir())


@pytest.mark.slow
def test_a_cluster_joined_from_a_job_thread_outlives_that_thread():
    """The app opens datastores in job threads: the local cluster a job starts must outlive the job
    (Linux sends its processes the parent-death signal when the thread that started them ends)."""
    code = ("import threading, ray\n"
            "from knn_explorer.core.cluster.connection import connect\n"
            "job = threading.Thread(target=connect, args=('local',)); job.start(); job.join()\n"
            "answer = []\n"
            "later = threading.Thread(target=lambda: answer.append(ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60)))\n"
            "later.start(); later.join(); print(answer)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # a cluster of its own
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert out.stdout.strip() == "[42]", out.stderr[-2000:]
