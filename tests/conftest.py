import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as knn_explorer/__init__.py, before torch loads

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import save_tiny_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory):
    """Module- and session-scoped fixtures run before the per-test home below: without this their
    datastore builds would land in the user's real data home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KNN_EXPLORER_HOME", str(tmp_path_factory.mktemp("session-home")))
        yield


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch):
    """Every test gets its own empty data home (catalog + datastores)."""
    home = tmp_path / "home"
    monkeypatch.setenv("KNN_EXPLORER_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="session")
def other_tiny_gpt2_dir(tmp_path_factory):
    """Same architecture and tokenizer, different weights."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-gpt2-other"), "gpt2", seed=1)


@pytest.fixture(scope="session")
def small_datastore(tmp_path_factory, tiny_gpt2_dir, session_home):
    """One real datastore ("small", windows 32/16) over the test corpus, shared by the tests that only
    read it: (model, catalog, datastore, docs folder)."""
    from corpus import write_corpus
    from knn_explorer.core.datastore.catalog import Catalog
    from knn_explorer.core.datastore.builder import BuildParameters
    from knn_explorer.core.datastore.library import build_datastore, open_datastore
    from knn_explorer.core.models import load_model

    model = load_model(str(tiny_gpt2_dir), device="cpu")
    catalog = Catalog(tmp_path_factory.mktemp("home") / "catalog.sqlite")
    docs = write_corpus(tmp_path_factory.mktemp("docs"))
    build_datastore(catalog, "small", model, [docs], BuildParameters(context_length=32, stride=16, batch_size=4))
    return model, catalog, open_datastore(catalog, "small", model), docs


@pytest.fixture(autouse=True)
def collect_qt_garbage_on_the_main_thread(request):
    """Qt objects must be destroyed on the thread that made them. A GUI test's windows often end in
    reference cycles (signals, lambdas, retrofits' hooks); left to the cyclic collector, they may be
    freed whenever it next runs — possibly in a worker thread of a later test, which crashes Qt
    (seen in CI: a segfault "Garbage-collecting" inside a model-loading worker). Collect them here."""
    yield
    if "qtbot" in request.fixturenames:
        import gc

        gc.collect()
