"""Training is a method's hook (`Method.trainer`, `Method.train`): a plug-in with an adapter to train
appears in `train-gates --method` and in the app's gate-training dialog, and both call its `train`,
naming no method. The plug-in is a throwaway distribution on sys.path (an entry point in its
dist-info), as in test_gui_plugin_method.py."""
from __future__ import annotations

import json

import pytest
from plugin_helpers import installed_plugin

from cli_helpers import assert_one_line_error, cli
from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.methods import registry

TOY_TRAINABLE = '''
"""Tilt: p_final = softmax(log p_LM + b), b learned (here: made up), a plug-in for the tests."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from knn_explorer.core.methods import Method, MethodSettings, MethodStep, Trained, Trainer
from knn_explorer.core.methods.base import setting
from knn_explorer.core.training.update_loop import TrainingStep

CALLS = []


@dataclass(frozen=True)
class TiltSettings(MethodSettings):
    k: int = setting(3, help="made up")


class Tilt(Method):
    name = "tilt"
    label = "Tilted LM"
    Settings = TiltSettings
    trainer = Trainer("its bias", learns_from="documents", learning_rate=0.5, default_name="tilt-bias",
                      settings=("k",), gates_title="Bias")

    def combine(self, outputs):
        return MethodStep(torch.log_softmax(outputs.log_p_lm.double(), dim=-1))

    @classmethod
    def train(cls, model, settings, resources, sources, training, checkpoint, on_step=None, on_progress=None,
              should_stop=None):
        CALLS.append({"k": settings.k, "documents": len(sources), "lr": training.learning_rate,
                      "segment": training.segment})
        for step in (1, 2):
            if on_step is not None:
                on_step(TrainingStep(step=step, loss=1.0 / step, gates=[0.5]))
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_file({"bias": torch.zeros(1)}, str(checkpoint))
        summary = {"steps": 2, "seconds": 0.0, "loss_first": 1.0, "loss_last": 0.5, "gates": [0.5]}
        return Trained(summary, {"k": settings.k}, f"{len(sources)} documents")
'''


@pytest.fixture
def trainable_plugin(tmp_path, monkeypatch):
    """The distribution `toy_trainable` 0.1 on sys.path, registering `tilt`; gone afterwards."""
    with installed_plugin(tmp_path / "site", "toy_trainable", TOY_TRAINABLE, {"tilt": "toy_trainable:Tilt"},
                          monkeypatch):
        yield __import__("toy_trainable")


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20, encoding="utf-8")
    return folder


def test_registry_lists_the_trainable_methods_built_in_and_plugged_in(trainable_plugin):
    trainable = [method.name for method in registry.trainable()]
    assert "tilt" in trainable and "memtrf" in trainable and "spalm" in trainable
    assert "none" not in trainable and "knnlm" not in trainable


def test_train_gates_offers_and_trains_a_plugin(trainable_plugin, tiny_gpt2_dir, docs, tmp_path):
    assert "tilt" in cli("train-gates", "--help").stdout
    out = tmp_path / "tilt.safetensors"
    result = cli("train-gates", "--method", "tilt", "--model", tiny_gpt2_dir, "--docs", docs, "--out", out,
                 "--k", 5, "--segment", 16, "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["step"] for line in lines[:-1]] == [1, 2]
    assert lines[-1]["k"] == 5 and lines[-1]["name"] == "tilt" and out.exists()
    assert trainable_plugin.CALLS == [{"k": 5, "documents": 1, "lr": None, "segment": 16}]
    listed = json.loads(cli("list", "--json").stdout)["adapters"]
    assert [(a["name"], a["kind"]) for a in listed] == [("tilt", "tilt")]
    assert_one_line_error(cli("train-gates", "--method", "none", "--model", tiny_gpt2_dir, "--docs", docs,
                              "--out", tmp_path / "x.safetensors", check=False), 2, "has nothing to train")


def test_the_gate_training_dialog_lists_and_trains_a_plugin(qtbot, trainable_plugin, tiny_gpt2_dir, docs):
    from knn_explorer.core.models import load_model
    from knn_explorer.gui.dialogs.gate_training import GateTrainingDialog

    catalog = Catalog()
    dialog = GateTrainingDialog(catalog, load_model(tiny_gpt2_dir, device="cpu"), docs)
    qtbot.addWidget(dialog)
    listed = [dialog.method.itemData(i) for i in range(dialog.method.count())]
    assert "tilt" in listed and "memtrf" in listed and "none" not in listed
    dialog.method.setCurrentIndex(dialog.method.findData("tilt"))
    assert dialog.method.currentText() == "Tilted LM: its bias"
    assert dialog.name.text() == "tilt-bias" and dialog.lr.value() == pytest.approx(0.5)
    assert not dialog.layer.isVisibleTo(dialog) and dialog.docs.isVisibleTo(dialog)
    with qtbot.waitSignal(dialog.adapter_ready, timeout=60_000, raising=False) as blocker:
        assert dialog.start()
    assert blocker.signal_triggered, dialog.status.text()
    assert blocker.args[0] == "tilt"
    assert trainable_plugin.CALLS == [{"k": 3, "documents": 1, "lr": pytest.approx(0.5), "segment": 64}]
    assert dialog.gate_plot.values() == [0.5] and catalog.adapter("tilt-bias").kind == "tilt"
    dialog.close()
