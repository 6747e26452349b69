"""A run exported to JSON reads back identical; CSV opens with the csv module."""
import csv

import pytest
from corpus import write_corpus

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.datastore.library import build_datastore, open_datastore
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.models import load_model
from knn_explorer.core.generation.run_export import read_json, write_csv, write_json


@pytest.fixture
def records(tmp_path, tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    catalog = Catalog()
    build_datastore(catalog, "notes", model, [write_corpus(tmp_path / "docs")], BuildParameters(context_length=32, stride=16))
    knn = KnnLmMethod(model, KnnLmSettings(k=4), Resources(open_datastore(catalog, "notes", model)))
    return list(StepGenerator(model, "The quick", GenerationSettings(max_new_tokens=6, stop_at_eos=False), knn))


def test_json_round_trip_is_exact(tmp_path, records):
    path = write_json(tmp_path / "run.json", records, prompt="The quick", settings={"k": 4})
    prompt, settings, back = read_json(path)
    assert prompt == "The quick" and settings == {"k": 4}
    assert back == records


def test_csv_has_one_row_per_token_with_gain(tmp_path, records):
    path = write_csv(tmp_path / "run.csv", records)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [r.step for r in records]
    assert float(rows[2]["gain"]) == pytest.approx(records[2].gain)
    assert rows[0]["nearest_document"] == records[0].neighbours[0].document


def test_reading_something_else_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a kNN Explorer run"):
        read_json(other)


def test_files_carry_the_model_datastore_and_settings(tmp_path, records):
    """Issue 13 item 12: an exported run says what made it."""
    import json

    context = {"model": "tiny", "datastore": "notes", "k": 99, "lambda_mode": "fixed", "greedy": True,
               "method_settings.adaptive.retrieve_fraction": 0.5, "gates": [0.1, 0.2]}
    with open(write_csv(tmp_path / "run.csv", records, context), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {(r["model"], r["datastore"], r["lambda_mode"], r["greedy"]) for r in rows} == {
        ("tiny", "notes", "fixed", "True")}
    assert rows[0]["method_settings.adaptive.retrieve_fraction"] == "0.5" and json.loads(rows[0]["gates"]) == [0.1, 0.2]
    assert {r["k"] for r in rows} == {"4"}  # a token's own k (what retrieval used) keeps its column
    data = json.loads(write_json(tmp_path / "run.json", records, "The quick", {"k": 4}, model="tiny",
                                 datastore="notes").read_text(encoding="utf-8"))
    assert (data["model"], data["datastore"], data["settings"]) == ("tiny", "notes", {"k": 4})
    assert read_json(tmp_path / "run.json")[1] == {"k": 4}
