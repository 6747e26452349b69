"""The token strip and the token inspector, with real records from a tiny model and a real datastore."""
import dataclasses
import math
import time
from pathlib import Path

import pytest
from corpus import write_corpus
from PySide6.QtCore import QEvent, QPoint, Qt
from PySide6.QtGui import QColor, QHelpEvent, QImage
from PySide6.QtWidgets import QToolTip

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.datastore.library import build_datastore, open_datastore
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.models import load_model
from knn_explorer.core.records import RetrievalSettings
from knn_explorer.gui import colours
from knn_explorer.gui.widgets.document_viewer import open_document_at
from knn_explorer.gui.widgets.neighbour_table import NeighbourTableModel
from knn_explorer.gui.widgets.token_inspector import TokenInspector
from knn_explorer.gui.widgets.token_strip import (
    COLOUR_QUANTITIES,
    TokenStrip,
    colour_for,
    format_distance,
    record_gain,
)

PROMPT = "The quick brown"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def generated(tiny_gpt2_dir, tmp_path_factory):
    """(docs folder, records) of 12 kNN-LM steps over a datastore built from a real folder."""
    root = tmp_path_factory.mktemp("token-views")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KNN_EXPLORER_HOME", str(root / "home"))
        model = load_model(str(tiny_gpt2_dir), device="cpu")
        docs = write_corpus(root / "docs")
        catalog = Catalog()
        build_datastore(catalog, "notes", model, [docs], BuildParameters(context_length=32, stride=16))
        datastore = open_datastore(catalog, "notes", model)
        generator = StepGenerator(model, PROMPT, GenerationSettings(max_new_tokens=12, stop_at_eos=False),
                                  KnnLmMethod(model, KnnLmSettings(k=8), Resources(datastore)))
        records = list(generator)
    assert len(records) == 12 and all(r.neighbours for r in records)
    return docs, records


@pytest.fixture
def records(generated):
    return generated[1]


@pytest.fixture
def strip(qtbot):
    widget = TokenStrip()
    qtbot.addWidget(widget)
    widget.resize(640, 220)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


@pytest.fixture
def inspector(qtbot):
    widget = TokenInspector()
    qtbot.addWidget(widget)
    widget.resize(1200, 620)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def _rendered_colour(strip: TokenStrip, step: int) -> QColor:
    """The colour actually painted inside a chip (left padding, vertical middle: no text there)."""
    image = strip.canvas.grab().toImage()
    rect = strip.chip_rect(step)
    ratio = image.devicePixelRatio()
    return image.pixelColor(int((rect.left() + 2) * ratio), int(rect.center().y() * ratio))


# ----------------------------------------------------------------------------- strip

def test_strip_shows_one_chip_per_record_after_the_prompt_and_wraps(strip, records, qtbot):
    strip.set_prompt(PROMPT)
    for record in records:
        strip.append(record)
    assert strip.chip_count() == len(records)
    assert strip.records() == records
    assert "12 tokens" in strip.count_label.text()
    rects = [strip.chip_rect(r.step) for r in records]
    prompt_pieces = [p for p in strip.canvas.pieces if p.record is None]
    assert " ".join(p.text for p in prompt_pieces) == PROMPT
    assert all(rects[0].left() > p.rect.right() or rects[0].top() > p.rect.top() for p in prompt_pieces)
    for a, b in zip(rects, rects[1:]):  # reading order, no overlaps
        assert not a.intersects(b)
        assert (b.top() == a.top() and b.left() > a.right()) or b.top() > a.top()

    strip.clear()
    assert strip.chip_count() == 0 and strip.records() == []
    strip.resize(strip.minimumSizeHint().width(), 300)  # narrow: the chips wrap onto lines inside the width
    qtbot.waitUntil(lambda: strip.canvas.width() < 500)
    words = [dataclasses.replace(records[0], step=i, token=t) for i, t in enumerate(
        [" Retrieval", " helps", " when", "\n", " the", " text", " resembles", "\t", " ", " stored", " text"] * 3)]
    strip.extend(words)
    tops = {strip.chip_rect(r.step).top() for r in words}
    assert len(tops) >= 5
    assert all(strip.chip_rect(r.step).right() < strip.canvas.width() for r in words)
    assert strip.chip_text(0) == "Retrieval"  # the leading space becomes a gap, not a glyph
    assert strip.chip_text(3) == "↵" and strip.chip_text(7) == "⇥" and strip.chip_text(8) == "·"
    assert strip.chip_rect(4).left() == strip.canvas.MARGIN  # after a newline token, a new line
    assert strip.chip_rect(4).top() > strip.chip_rect(3).top()


def test_switching_the_colour_quantity_recolours_existing_chips(strip, records, qtbot):
    strip.extend(records)
    step = max(records, key=lambda r: abs(record_gain(r))).step
    record = records[step]
    strip.set_colour_by("gain")
    gain_colour = strip.chip_colour(step)
    assert gain_colour == colour_for(record, "gain") == colours.GAIN_MAP.colour(record_gain(record))
    qtbot.waitUntil(lambda: _rendered_colour(strip, step) == gain_colour)

    strip.set_colour_by("lambda")
    lambda_colour = strip.chip_colour(step)
    assert lambda_colour == colours.LAMBDA_MAP.colour(record.lambda_)
    assert lambda_colour != gain_colour
    assert _rendered_colour(strip, step) == lambda_colour
    assert strip.legend_widget().title == "λ / gate"

    strip.colour_combo.setCurrentIndex(strip.colour_combo.findData("p_final"))  # the combo drives it too
    assert strip.colour_by() == "p_final"
    assert strip.chip_colour(step) == colours.PROB_MAP.colour(record.chosen_prob_final)
    assert strip.legend_widget().title == "p_final"
    assert set(COLOUR_QUANTITIES) == {"lambda", "gain", "p_final"}
    with pytest.raises(ValueError):
        strip.set_colour_by("entropy")


def test_clicking_a_chip_selects_it_and_emits_its_step(strip, records, qtbot):
    strip.set_prompt(PROMPT)
    strip.extend(records)
    target = records[7]
    center = strip.chip_rect(target.step).center()
    with qtbot.waitSignal(strip.token_selected, timeout=2000) as blocker:
        qtbot.mouseClick(strip.canvas, Qt.LeftButton, pos=center)
    assert blocker.args == [target.step]
    assert strip.selected_step() == target.step
    with qtbot.assertNotEmitted(strip.token_selected):  # the prompt is not a token
        qtbot.mouseClick(strip.canvas, Qt.LeftButton, pos=QPoint(strip.canvas.MARGIN + 3, strip.chip_rect(0).center().y()))
    assert strip.selected_step() == target.step
    with qtbot.waitSignal(strip.token_selected, timeout=2000) as blocker:
        assert strip.select(records[2].step)
    assert blocker.args == [records[2].step] and strip.selected_step() == records[2].step
    assert not strip.select(999)


def test_hovering_a_chip_shows_its_numbers(strip, records, qtbot):
    strip.extend(records)
    record = records[3]
    pos = strip.chip_rect(record.step).center()
    strip.canvas.event(QHelpEvent(QEvent.ToolTip, pos, strip.canvas.mapToGlobal(pos)))
    text = QToolTip.text()
    for needle in (f"<td>{record.step}</td>", "p_LM", "p_final", "λ", "gain", "nearest",
                   format_distance(min(n.distance for n in record.neighbours))):
        assert needle in text


def test_appending_300_records_is_fast(strip, records, qtbot):
    many = [dataclasses.replace(records[i % len(records)], step=i) for i in range(300)]
    start = time.perf_counter()
    for record in many:
        strip.append(record)
        qtbot.wait(0) if record.step % 50 == 0 else None  # let paints happen, as in the app
    elapsed = time.perf_counter() - start
    assert strip.chip_count() == 300
    assert elapsed < 2.0, f"300 appends took {elapsed:.2f} s"
    bar = strip.scroll.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum())  # follows the newest token


# ----------------------------------------------------------------------------- inspector

def test_neighbour_table_lists_the_records_neighbours_with_documents_and_distances(inspector, generated):
    docs, records = generated
    record = records[5]
    inspector.show_record(record, records)
    model = inspector.neighbour_table.model()
    assert model.rowCount() == len(record.neighbours) > 0
    for row, n in enumerate(record.neighbours):
        def cell(column, role=Qt.DisplayRole, row=row):
            return model.data(model.index(row, column), role)
        assert cell(NeighbourTableModel.RANK) == str(n.rank)
        assert cell(NeighbourTableModel.DOCUMENT) == Path(n.document).name
        assert docs in Path(n.document).parents
        assert n.document in cell(NeighbourTableModel.DOCUMENT, Qt.ToolTipRole)
        distance = cell(NeighbourTableModel.DISTANCE)
        assert distance == format_distance(n.distance)
        assert math.isclose(float(distance), n.distance, rel_tol=1e-3)
        assert cell(NeighbourTableModel.WEIGHT) == f"{n.weight * 100:.1f}%"
        start, end = n.highlight
        assert n.context[start:end] == n.token  # the highlight marks the neighbour's next token
    # Every one of the k neighbours is described, and the caption says what the distance is.
    assert len(record.neighbours) == record.retrieval.k
    assert f"all k = {record.retrieval.k}" in inspector.neighbour_caption.text()
    assert "squared L2" in inspector.neighbour_caption.text()


def test_sources_count_the_neighbours_per_document_and_histogram_their_distances(inspector, records):
    from collections import Counter

    record = max(records, key=lambda r: len({n.document for n in r.neighbours}))
    inspector.show_record(record, records)
    summary = inspector.neighbour_summary
    expected = Counter(n.document for n in record.neighbours)
    assert {s.document: s.neighbours for s in summary.shares} == dict(expected)
    assert [s.neighbours for s in summary.shares] == sorted(expected.values(), reverse=True)
    assert sum(s.weight for s in summary.shares) == pytest.approx(sum(n.weight for n in record.neighbours))
    table = summary.documents
    assert table.rowCount() == len(expected) and table.item(0, 1).text() == str(summary.shares[0].neighbours)
    chosen, others = summary.bin_counts()
    assert sum(chosen) + sum(others) == len(record.neighbours)
    assert sum(chosen) == sum(n.token_id == record.token_id for n in record.neighbours)
    assert f"{len(record.neighbours)}" in summary.documents_caption.text()


def test_long_tokens_keep_a_tick_label_that_fits_under_their_bar(inspector, records, qtbot):
    record = records[3]
    long_tokens = [dataclasses.replace(p, token=f"internationalisation{i}") for i, p in enumerate(record.p_lm)]
    shown = dataclasses.replace(record, p_lm=long_tokens)
    inspector.resize(640, 620)  # bars too narrow for 8 characters
    inspector.show_record(shown, [shown])
    inspector.settle()
    plot = inspector.p_lm_plot
    labels = plot.tick_labels
    assert len(labels) == len(long_tokens) and all(labels)  # none dropped
    font = plot.getPlotItem().getAxis("bottom").style["tickFont"]
    from PySide6.QtGui import QFontMetrics
    bar_width = plot.getPlotItem().vb.width() / len(long_tokens)
    assert max(QFontMetrics(font).horizontalAdvance(t) for t in labels) <= bar_width
    assert all(t.endswith("…") for t in labels)
    assert bar_width < 8 * QFontMetrics(font).averageCharWidth()  # the case that dropped labels before


def test_double_clicking_a_neighbour_asks_to_open_its_document_at_the_passage(inspector, records, qtbot):
    record = records[5]
    inspector.show_record(record, records)
    table = inspector.neighbour_table
    row = next((i for i, n in enumerate(record.neighbours) if n.token.strip()), 0)
    n = record.neighbours[row]
    pos = table.visualRect(table.model().index(row, NeighbourTableModel.PASSAGE)).center()
    qtbot.mouseClick(table.viewport(), Qt.LeftButton, pos=pos)
    with qtbot.waitSignal(inspector.open_document, timeout=2000) as blocker:
        qtbot.mouseDClick(table.viewport(), Qt.LeftButton, pos=pos)
    assert blocker.args == [n.document, n.offset, len(n.token)]  # the token's characters, not the whole word

    dialog = open_document_at(n.document, n.offset, length=len(n.token))
    qtbot.addWidget(dialog)
    editor = dialog.findChild(type(dialog.layout().itemAt(1).widget()), "document_text")
    assert editor.isReadOnly()
    assert editor.toPlainText() == Path(n.document).read_text(encoding="utf-8")
    cursor = editor.textCursor()
    assert cursor.selectionStart() == n.offset and cursor.selectedText() == n.token
    dialog.close()


def test_bar_plots_hold_the_records_probabilities_with_token_labels(inspector, records, qtbot):
    record = records[4]
    inspector.show_record(record, records)
    # The plots follow one per event-loop turn (each repaint stays short), without being asked to.
    qtbot.waitUntil(lambda: inspector.is_settled(), timeout=2000)
    for plot, dist in zip(inspector.distribution_plots(), (record.p_lm, record.p_knn, record.p_final)):
        assert plot.heights() == pytest.approx([p.prob for p in dist])
        assert list(plot.bars.opts["x"]) == list(range(len(dist)))
        ticks = plot.getPlotItem().getAxis("bottom")._tickLevels[0]
        assert [t[0] for t in ticks] == list(range(len(dist)))
        chosen = [i for i, p in enumerate(dist) if p.token_id == record.token_id]
        brushes = plot.bars.opts["brushes"]
        for i in chosen:
            assert brushes[i].color() == QColor(colours.CHOSEN)
    for plot, dist in zip(inspector.distribution_plots(), (record.p_lm, record.p_knn, record.p_final)):
        top = max(p.prob for p in dist)  # each plot on its own scale, showing every bar
        assert top <= plot.viewRange()[1][1] <= min(1.0, top * 1.12) * 1.01

    flat = dataclasses.replace(record, p_final=[dataclasses.replace(p, prob=6.9e-4 - i * 1e-5)
                                                for i, p in enumerate(record.p_final)])
    inspector.show_record(flat, [flat])
    inspector.settle()
    assert inspector.p_final_plot.viewRange()[1][1] < 1e-3  # a flat distribution is visibly flat, not empty

    bare = dataclasses.replace(record, method="none", p_knn=None, lambda_=None, neighbours=[], retrieval=None)
    inspector.show_record(bare, [bare])
    inspector.settle()
    assert inspector.p_knn_plot.heights() == []
    assert "no retrieval" in inspector.p_knn_plot.empty_text.textItem.toPlainText()
    assert inspector.neighbour_table.model().rowCount() == 0
    assert "no retrieval" in inspector.settings_label.text()


def test_settings_are_always_shown_with_lambda_k_temperature_distance_mode_and_datastore(inspector, records):
    assert inspector.settings_label.isVisible() and "k" in inspector.settings_label.text()  # before any record
    record = records[0]
    inspector.show_record(record, records)
    text = inspector.settings_label.text()
    for needle in ("λ</b> 0.25", "k</b> 8", "T</b> 1", "distances</b> exact", "datastore</b> notes"):
        assert needle in text
    approximate = dataclasses.replace(record, retrieval=RetrievalSettings(16, 10.0, "approximate", "other"))
    inspector.show_record(approximate, records)
    text = inspector.settings_label.text()
    for needle in ("k</b> 16", "T</b> 10", "distances</b> approximate", "datastore</b> other"):
        assert needle in text


def test_clicking_an_alternative_requests_a_branch_and_the_chosen_token_does_not(inspector, records, qtbot):
    record = records[6]
    inspector.show_record(record, records)
    tree = inspector.alternatives
    assert tree.topLevelItemCount() == len(record.p_final)
    ids = [tree.topLevelItem(i).data(0, tree.TOKEN_ID_ROLE) for i in range(tree.topLevelItemCount())]
    assert ids == [p.token_id for p in record.p_final]
    index = next(i for i, p in enumerate(record.p_final) if p.token_id != record.token_id)
    item = tree.topLevelItem(index)
    with qtbot.waitSignal(inspector.branch_requested, timeout=2000) as blocker:
        qtbot.mouseClick(tree.viewport(), Qt.LeftButton, pos=tree.visualItemRect(item).center())
    assert blocker.args == [record.step, record.p_final[index].token_id]
    chosen = [i for i, p in enumerate(record.p_final) if p.token_id == record.token_id]
    if chosen:
        with qtbot.assertNotEmitted(inspector.branch_requested):
            qtbot.mouseClick(tree.viewport(), Qt.LeftButton,
                             pos=tree.visualItemRect(tree.topLevelItem(chosen[0])).center())


def test_plot_items_are_updated_in_place_not_rebuilt(inspector, records):
    inspector.show_record(records[1], records)
    inspector.settle()
    plots = inspector.plots()
    before = {name: (plot.getPlotItem(), list(plot.getPlotItem().items)) for name, plot in plots.items()}
    bars = [p.bars for p in inspector.distribution_plots()]
    history = inspector.history_plot
    curves = (history.weight_curve, history.gain_curve, history.marker)
    heights = inspector.p_final_plot.heights()
    inspector.show_record(records[9], records)
    inspector.show_record(records[10], records)  # replaces what record 9 left pending
    inspector.settle()
    assert inspector.plots() == plots
    for name, plot in plots.items():
        assert (plot.getPlotItem(), list(plot.getPlotItem().items)) == before[name]
    assert [p.bars for p in inspector.distribution_plots()] == bars
    assert (history.weight_curve, history.gain_curve, history.marker) == curves
    assert inspector.p_final_plot.heights() == pytest.approx([p.prob for p in records[10].p_final])
    assert inspector.p_final_plot.heights() != heights or records[10].p_final == records[1].p_final
    assert history.marker.value() == records[10].step and history.marker.isVisible()
    xs, ys = history.weight_curve.getData()
    assert list(xs) == [r.step for r in records] and list(ys) == pytest.approx([r.lambda_ for r in records])
    _, gains = history.gain_curve.getData()
    assert list(gains) == pytest.approx([record_gain(r) for r in records])


@pytest.mark.parametrize("shown", [True, False])
def test_export_plots_writes_valid_pngs(records, tmp_path, qtbot, shown):
    inspector = TokenInspector()
    qtbot.addWidget(inspector)
    if shown:
        inspector.resize(1200, 620)
        inspector.show()
        qtbot.waitExposed(inspector)
    inspector.show_record(records[3], records)
    paths = inspector.export_plots(tmp_path / "plots")
    assert len(paths) == 4 and len(set(paths)) == 4
    assert {p.name for p in paths} == {f"{n}-step3.png" for n in ("p_lm", "p_knn", "p_final", "history")}
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        image = QImage(str(path))
        assert not image.isNull() and image.width() >= 400 and image.height() >= 200
        colours_seen = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
        assert len(colours_seen) > 5  # something was drawn, not a blank canvas


def test_every_control_explains_itself(inspector, strip, records):
    inspector.show_record(records[0], records)
    controls = [strip.colour_combo, strip.canvas, strip.legend_widget(), strip.count_label,
                inspector.neighbour_table, inspector.alternatives, inspector.settings_label, inspector.token_label,
                inspector.summary_label, *inspector.plots().values()]
    assert all(c.toolTip() for c in controls)
    model = inspector.neighbour_table.model()
    assert all(model.headerData(c, Qt.Horizontal, Qt.ToolTipRole) for c in range(model.columnCount()))


def test_a_step_that_skipped_retrieval_is_grey_and_says_so(qtbot, records):
    from knn_explorer.gui.widgets.token_strip import record_tooltip, record_weight

    retrieved = records[0]
    skipped = dataclasses.replace(retrieved, method="adaptive", lambda_=0.0, neighbours=[], retrieval=None, p_knn=None)
    assert record_weight(skipped) is None and record_weight(retrieved) == retrieved.lambda_
    assert "skipped (no retrieval)" in record_tooltip(skipped)
    assert "skipped" not in record_tooltip(dataclasses.replace(retrieved, lambda_=0.0))  # kNN-LM at λ 0 did search
