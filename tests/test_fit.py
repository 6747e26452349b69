"""Fitting kNN-LM's λ and T on held-out text: the grid from one pass and one retrieval, its argmin,
each point equal to a full evaluation, the fit kept per datastore, and `knn-explorer fit`."""
import json
import math
import sqlite3

import numpy as np
import pytest

from cli_helpers import cli
from corpus import write_corpus
from knn_explorer.core.datastore.catalog import Catalog, CatalogError
from knn_explorer.core.evaluation.fit import (DEFAULT_LAMBDAS, FitError, FitResult, default_temperatures, describe_fit,
                                              fit, fit_result_of, half_octaves, remember_fit)
from knn_explorer.core.evaluation.perplexity import evaluate
from knn_explorer.core.evaluation.sweeps import collect
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod

WINDOWS = {"context_length": 32, "stride": 16}


@pytest.fixture(scope="module")
def setup(small_datastore):
    """The shared tiny datastore, and a held-out text: stored sentences reworded and mixed with new ones."""
    model, catalog, datastore, _docs = small_datastore
    text = ("The quick brown fox jumps over the sleeping dog. A route binds a URL to a view function. "
            "Retrieval finds the lazy fox when the text resembles the stored text. Zebras juggle marmalade. ") * 3
    return model, catalog, datastore, text, collect(model, text, **WINDOWS)


def test_the_fit_is_the_grid_argmin_beats_the_defaults_and_each_point_is_a_full_evaluation(setup):
    model, _catalog, datastore, text, collected = setup
    lambdas, temperatures = [0.05, 0.25, 0.5, 0.75, 0.95], [0.5, 1, 4, 16, 64, 256]
    result = fit(datastore, collected, lambdas, temperatures, KnnLmSettings(k=8))
    assert result.ppl.shape == (len(temperatures), len(lambdas)) and result.tokens == len(collected.targets)
    lam, temperature, ppl = result.best
    row, column = np.unravel_index(np.argmin(result.ppl), result.ppl.shape)
    assert (lam, temperature, ppl) == (lambdas[column], temperatures[row], result.ppl.min())
    assert result.baseline["lambda"] == 0.25 and result.baseline["temperature"] == 1.0
    assert ppl < result.baseline["ppl"] < result.ppl_lm  # fitted beats the defaults, which beat the LM alone
    for settings, expected in ((KnnLmSettings(k=8, lambda_=lam, temperature=temperature), ppl),
                               (KnnLmSettings(k=8), result.baseline["ppl"]),
                               (KnnLmSettings(k=8, lambda_=0.95, temperature=256), result.ppl[-1, -1])):
        full = evaluate(model, text, KnnLmMethod(model, settings, Resources(datastore)), **WINDOWS)
        assert full.ppl == pytest.approx(expected, rel=1e-6)
    assert result.settings == KnnLmSettings(k=8, lambda_=lam, temperature=temperature)


def test_one_retrieval_serves_the_whole_grid(setup, monkeypatch):
    _model, _catalog, datastore, _text, collected = setup
    calls = []
    search = datastore.search
    monkeypatch.setattr(datastore, "search", lambda queries, k, exact=True: calls.append((len(queries), k))
                        or search(queries, k, exact))
    result = fit(datastore, collected, settings=KnnLmSettings(k=8))
    assert calls == [(len(collected.targets), 8)]  # one chunk here: one search, at k, for 19 λ × all T
    assert result.lambdas == DEFAULT_LAMBDAS and len(result.lambdas) == 19
    assert result.temperatures == default_temperatures(np.array([result.median_nearest_distance]))  # one chunk
    assert len(result.temperatures) == 15 and result.ppl.shape == (15, 19)


def test_the_default_temperatures_follow_the_texts_own_distances():
    base = [0.5, 0.71, 1, 1.41, 2, 2.83, 4, 5.66, 8, 11.3, 16, 22.6, 32, 45.3, 64]
    assert half_octaves(0.5, 64) == base
    assert default_temperatures(np.array([20.0, 27.7, 40.0])) == base  # the demo's scale
    far = default_temperatures(np.array([3000.0, np.inf]))  # keys thousands apart: a grid in the thousands
    assert len(far) == 15 and far[0] == 64 and far[-1] == 8190
    near = default_temperatures(np.array([0.25]))  # normalised keys: a grid below 1
    assert len(near) == 15 and near[0] == pytest.approx(0.5 / 128, rel=0.01) and near[-1] == 0.5


def test_values_no_grid_can_hold_are_refused_in_one_line(setup):
    _model, _catalog, datastore, _text, collected = setup
    for lambdas, temperatures, words in (([0.0, 0.5], None, "strictly between 0 and 1"), ([], None, "at least one"),
                                         (None, [0, 1], "> 0"), (None, [math.inf], "finite")):
        with pytest.raises(FitError, match=words):
            fit(datastore, collected, lambdas, temperatures)


def test_a_fit_is_kept_per_datastore_and_goes_with_it(setup, tmp_path):
    _model, _catalog, datastore, _text, collected = setup
    catalog = Catalog(tmp_path / "catalog.sqlite")
    manifest = json.loads((datastore.folder / "manifest.json").read_text())
    for name in ("one", "two"):
        catalog.register_datastore({**manifest, "name": name}, datastore.folder, [], [], 1)
    assert catalog.fitted("one") is None
    result = fit(datastore, collected, [0.25, 0.5], [1, 8], KnnLmSettings(k=8))
    remember_fit(catalog, "one", "tiny", result, "/texts/heldout")
    later = fit(datastore, collected, [0.5, 0.75], [8, 16], KnnLmSettings(k=4))
    remember_fit(catalog, "one", "tiny", later, "/texts/other")

    row = Catalog(tmp_path / "catalog.sqlite").fitted("one")  # a new handle: read back from the file
    lam, temperature, ppl = later.best
    assert (row.lambda_, row.temperature, row.k, row.distance) == (lam, temperature, 4, "exact")
    assert row.ppl_after == pytest.approx(ppl) and row.ppl_before == pytest.approx(later.baseline["ppl"])
    assert (row.lambda_before, row.temperature_before) == (0.25, 1.0) and row.ppl_lm == pytest.approx(later.ppl_lm)
    assert row.heldout == "/texts/other" and row.origin == "fit" and row.tokens == later.tokens
    assert row.datastore == "one" and row.model_name == "tiny" and row.created is not None
    again = fit_result_of(row)  # the grid comes back whole (the heatmap is drawn from it)
    assert again.best == later.best and np.allclose(again.ppl, later.ppl)
    assert [r.heldout for r in catalog.fits("one")] == ["/texts/other", "/texts/heldout"]
    assert catalog.fitted("two") is None

    with pytest.raises(CatalogError, match="no datastore named 'nope'"):
        remember_fit(catalog, "nope", "tiny", result, "x")
    catalog.remove_datastore("one")
    catalog.register_datastore({**manifest, "name": "one"}, datastore.folder, [], [], 1)
    assert catalog.fitted("one") is None  # a datastore built again under the name starts unfitted


def test_an_older_catalog_gets_the_table_and_a_read_only_one_has_no_fits(tmp_path, monkeypatch):
    path = tmp_path / "catalog.sqlite"
    Catalog(path).engine.dispose()
    with sqlite3.connect(path) as db:  # a catalog from before fits were kept
        db.execute("DROP TABLE fitted_settings")
    assert Catalog(path).fitted("anything") is None  # created on open
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE fitted_settings")
    monkeypatch.setattr("knn_explorer.core.datastore.catalog._writable", lambda _path: False)  # as for a read-only home
    read_only = Catalog(path)
    assert read_only.read_only and read_only.fitted("anything") is None and read_only.fits("anything") == []


def test_a_fit_result_round_trips_through_json_with_infinite_points():
    result = FitResult([0.5, 1.0 - 1e-9], [1.0], np.array([[3.0, math.inf]]), 8, "exact", 10, 5.0,
                       {"lambda": 0.25, "temperature": 1.0, "ppl": 4.0}, 2.0)
    text = json.dumps(result.to_json(), allow_nan=False)
    again = FitResult.from_json(json.loads(text))
    assert again.best == (0.5, 1.0, 3.0) and math.isinf(again.ppl[0, 1])


def test_the_demo_ships_the_fit_measured_on_it_and_a_demo_build_records_it(setup, tmp_path):
    from knn_explorer.core.evaluation.fit import DEMO_FIT, is_demo_build, remember_demo_fit
    from knn_explorer.core.home import DEMO_DOCS_DIR

    shipped = json.loads(DEMO_FIT.read_text(encoding="utf-8"))
    result = FitResult.from_json(shipped)
    assert (shipped["lambda"], shipped["temperature"]) == result.best[:2]  # the grid's argmin
    assert result.temperatures == half_octaves(0.5, 64) and result.lambdas == DEFAULT_LAMBDAS  # the default grid
    assert result.best[2] < result.baseline["ppl"] < result.ppl_lm
    assert is_demo_build("demo", [DEMO_DOCS_DIR], 256, 128)
    assert not is_demo_build("demo", [DEMO_DOCS_DIR], 64, 32) and not is_demo_build("other", [DEMO_DOCS_DIR], 256, 128)
    assert not is_demo_build("demo", [DEMO_DOCS_DIR, tmp_path], 256, 128)

    _model, _catalog, datastore, _text, _collected = setup
    catalog = Catalog(tmp_path / "catalog.sqlite")
    catalog.register_datastore({**json.loads((datastore.folder / "manifest.json").read_text()), "name": "demo-docs"},
                               datastore.folder, [], [], 1)
    row = remember_demo_fit(catalog, "demo-docs", "demo")
    assert (row.lambda_, row.temperature, row.origin) == (shipped["lambda"], shipped["temperature"], "shipped")
    assert row.heldout.endswith("resources/demo/heldout") and "shipped with the demo" in describe_fit(row)


# ---- the CLI ---------------------------------------------------------------------------------
@pytest.fixture
def notes(tmp_path, tiny_gpt2_dir):
    docs = write_corpus(tmp_path / "docs")
    cli("build", "--name", "notes", "--model", tiny_gpt2_dir, "--docs", docs, "--context", 32, "--stride", 16)
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("The quick brown fox jumps over the sleeping dog. A route binds a URL to a view. " * 4,
                       encoding="utf-8")
    return tiny_gpt2_dir, heldout


def test_cli_fit_prints_the_best_pair_keeps_it_and_generate_and_eval_then_use_it(notes):
    model, heldout = notes
    common = ("--model", model, "--datastore", "notes")
    out = json.loads(cli("fit", *common, "--heldout", heldout, "--lambdas", "0.1,0.5,0.9",
                         "--temperatures", "1,8,64", "--k", 8, "--context", 32, "--stride", 16, "--json").stdout)
    grid = np.array(out["grid"]["ppl"], dtype=float)
    row, column = np.unravel_index(np.argmin(grid), grid.shape)
    assert (out["lambda"], out["temperature"]) == (out["grid"]["lambdas"][column], out["grid"]["temperatures"][row])
    assert out["ppl"] <= out["baseline"]["ppl"] and out["k"] == 8 and out["datastore"] == "notes"
    kept = Catalog().fitted("notes")
    assert (kept.lambda_, kept.temperature, kept.k) == (out["lambda"], out["temperature"], 8)
    assert kept.heldout == str(heldout.resolve())

    text = cli("fit", *common, "--heldout", heldout, "--lambdas", "0.1,0.5", "--temperatures", "1,8",
               "--k", 8, "--context", 32, "--stride", 16).stdout
    assert "before  λ=0.25" in text and "fitted  λ=" in text and "best λ at each T" in text

    fitted = Catalog().fitted("notes")
    evaluated = cli("eval", *common, "--text", heldout, "--k", 8, "--context", 32, "--stride", 16, "--json")
    described = json.loads(evaluated.stdout)
    assert (described["lambda"], described["temperature"]) == (fitted.lambda_, fitted.temperature)
    assert f"kNN-LM uses λ={fitted.lambda_:g}, T={fitted.temperature:g} from 'notes''s fit" in evaluated.stderr
    chosen = json.loads(cli("eval", *common, "--text", heldout, "--k", 8, "--lambda", 0.3, "--context", 32,
                            "--stride", 16, "--json").stdout)
    assert (chosen["lambda"], chosen["temperature"]) == (0.3, fitted.temperature)  # a flag wins, T still fitted
    records = cli("generate", *common, "--prompt", "The quick brown", "--max-new-tokens", 2, "--json")
    retrieval = json.loads(records.stdout.splitlines()[0])["retrieval"]
    assert retrieval["temperature"] == fitted.temperature and "from 'notes''s fit" in records.stderr
    alone = cli("eval", "--model", model, "--text", heldout, "--context", 32, "--stride", 16)
    assert "fit" not in alone.stderr  # no datastore, nothing fitted to use


def test_cli_fit_refuses_a_bad_grid_before_loading_the_model(notes):
    model, heldout = notes
    bad = cli("fit", "--model", model, "--datastore", "notes", "--heldout", heldout, "--lambdas", "0,0.5", check=False)
    assert bad.returncode == 2 and "strictly between 0 and 1" in bad.stderr
    words = cli("fit", "--model", model, "--datastore", "notes", "--heldout", heldout, "--temperatures", "a,b",
                check=False)
    assert words.returncode == 2 and "--temperatures must be numbers" in words.stderr
