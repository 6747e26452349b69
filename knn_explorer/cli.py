"""`knn-explorer`: the headless face of the core. No subcommand opens the GUI.

Every failure is one line on stderr and a non-zero exit status (1: the request failed, 2: bad
usage, 130: interrupted); set KNN_EXPLORER_DEBUG=1 to see tracebacks.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from . import __version__

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "gui"
    try:
        return COMMANDS[command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the one place where any failure becomes a one-line message
        if os.environ.get("KNN_EXPLORER_DEBUG"):
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_FAILED


def one_line(exc: BaseException) -> str:
    from .core.datastore.build_lock import DatastoreBusy
    from .core.datastore.catalog import CatalogError
    from .core.datastore.folder import DatastoreError
    from .core.datastore.library import LibraryError
    from .core.desktop_integration import DesktopIntegrationError
    from .core.training.adapters import AdapterError
    from .core.mechanisms.memorizing import MemorizingError
    from .core.models import ModelLoadError
    from .core.progress import Cancelled
    from .core.mechanisms.spalm import SpalmError

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ModelLoadError, LibraryError, DatastoreError, Cancelled, ValueError, AdapterError,
                        MemorizingError, SpalmError, CatalogError, DatastoreBusy, DesktopIntegrationError)):
        return text
    return f"{type(exc).__name__}: {text}"


# ---- parser ----------------------------------------------------------------------------------
def method_names() -> list[str]:
    from .core.methods.registry import names  # entry-point names only: no method (and no torch) is imported

    return names()


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr like every other failure."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="knn-explorer", description="See inside kNN-augmented language models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gui = sub.add_parser("gui", help="open the desktop app (the default)")
    gui.add_argument("--screenshot", type=Path, metavar="FILE",
                     help="open the app on the demo, run the page's job, save the window as a PNG and exit")
    gui.add_argument("--size", default="1366x768", metavar="WxH", help="window size for --screenshot (default 1366x768)")
    gui.add_argument("--page", default="explore", choices=["explore", "evaluate", "side-by-side"],
                     help="the page --screenshot shows (default explore)")

    build = sub.add_parser("build", help="build a datastore from documents")
    build.add_argument("--name", required=True)
    build.add_argument("--model", required=True, help="demo, a local model folder, or a hub id")
    build.add_argument("--docs", required=True, nargs="+", metavar="PATH", help="files and/or folders")
    build.add_argument("--index", default="auto", choices=["auto", "flat", "ivfpq", "hnsw"])
    build.add_argument("--context", type=_at_least(2), default=256, help="window length in tokens (default 256)")
    build.add_argument("--stride", type=_at_least(1), default=128, help="window step in tokens (default 128)")
    build.add_argument("--batch-size", type=_at_least(1), default=8)
    build.add_argument("--max-file-mb", type=_positive, default=50.0, help="skip files larger than this")
    cluster = build.add_argument_group("on a Ray cluster (pip install 'knn-explorer[cluster]', docs/CLUSTER.md)")
    cluster.add_argument("--cluster", metavar="ADDRESS", default="",
                         help="encode and index on a Ray cluster: 'local' starts one here, else its address")
    cluster.add_argument("--shards", type=_at_least(1), default=2, help="key shards, one retrieval actor each (default 2)")
    cluster.add_argument("--encoders", type=_at_least(1), default=None,
                         help="model actors (default: one per GPU of the cluster, or one per CPU)")
    cluster.add_argument("--storage", metavar="FOLDER", default="",
                         help="where the datastore is written; every node must reach it (default: the data home)")
    _compression_flags(build)
    _common_model_flags(build)
    _json_flag(build)

    compress = sub.add_parser("compress", help="make a smaller copy of a datastore: PCA of its keys, pruning, or both")
    compress.add_argument("source", help="the datastore to compress (it stays as it is)")
    compress.add_argument("--name", required=True, help="name of the compressed datastore")
    compress.add_argument("--index", default="auto", choices=["auto", "flat", "ivfpq", "hnsw"])
    _compression_flags(compress)
    _json_flag(compress)

    listing = sub.add_parser("list", help="list datastores and unfinished builds")
    _json_flag(listing)

    generate = sub.add_parser("generate", help="generate text token by token")
    generate.add_argument("--model", required=True)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--max-new-tokens", type=_at_least(1), default=40)
    mode = generate.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="always take the most likely token (default)")
    mode.add_argument("--seed", type=int, help="sample from p_final with this seed")
    generate.add_argument("--neighbours", type=_at_least(0), default=16, help="neighbours described per token")
    generate.add_argument("--methods", help=f"side by side: up to four of {','.join(method_names())}, one column "
                                            "each, aligned by step")
    _memory_flags(generate)
    _method_flags(generate)
    _common_model_flags(generate)
    _json_flag(generate)

    evaluate = sub.add_parser("eval", help="perplexity with and without retrieval over the same tokens")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--text", required=True, type=Path, help="held-out text: a document or a folder of them")
    evaluate.add_argument("--context", type=_at_least(2), default=256)
    evaluate.add_argument("--stride", type=_at_least(1), default=128)
    evaluate.add_argument("--methods", help=f"compare several of {','.join(method_names())} on the same targets "
                                            "and windows (those that retrieve need --datastore)")
    _one_document_flag(evaluate)
    _memory_flags(evaluate)
    _method_flags(evaluate)
    _common_model_flags(evaluate)
    _json_flag(evaluate)

    sweep = sub.add_parser("sweep", help="kNN-LM perplexity as λ, k, temperature, datastore size or distance mode "
                                         "varies, or the Memorizing Transformer's as its memory size does")
    sweep.add_argument("--model", required=True)
    sweep.add_argument("--text", required=True, type=Path, help="held-out text: a document or a folder of them")
    sweep.add_argument("--datastore", help="the kNN-LM datastore (every parameter but memory)")
    sweep.add_argument("--param", required=True,
                       help="lambda, k, temperature, size, distance, memory, or a method's own sweep as "
                            "METHOD.SETTING (e.g. adaptive.retrieve_fraction; `knn-explorer methods --json`)")
    sweep.add_argument("--values", required=True, help="comma-separated, e.g. 0,0.1,0.25,0.5 (size: fractions; "
                                                        "distance: 1 exact, 0 the index's; memory: tokens)")
    sweep.add_argument("--k", type=_at_least(1), default=32)
    sweep.add_argument("--lambda", dest="lambda_", type=_fraction, default=0.25)
    sweep.add_argument("--temperature", type=_positive, default=1.0)
    sweep.add_argument("--approximate", action="store_true", help="use the index's distances")
    sweep.add_argument("--context", type=_at_least(2), default=256)
    sweep.add_argument("--stride", type=_at_least(1), default=128)
    sweep.add_argument("--seed", type=int, default=0, help="which random fractions a size sweep takes")
    _one_document_flag(sweep)
    _memory_flags(sweep, window=False)
    _common_model_flags(sweep)
    _json_flag(sweep)

    fit = sub.add_parser("fit", help="find kNN-LM's best λ and T on held-out text (one pass, a grid) and remember "
                                     "them for the datastore: generate and eval then use them")
    fit.add_argument("--model", required=True)
    fit.add_argument("--datastore", required=True, help="the datastore whose λ and T are fitted")
    fit.add_argument("--heldout", required=True, type=Path, help="held-out text: a document or a folder of them")
    fit.add_argument("--lambdas", help="comma-separated λ values, each in (0, 1) (default 0.05,0.1,…,0.95)")
    fit.add_argument("--temperatures", help="comma-separated T values (default: half-octaves from 0.5 to 64, "
                                            "widened to the text's own neighbour distances)")
    fit.add_argument("--k", type=_at_least(1), default=32)
    fit.add_argument("--approximate", action="store_true", help="fit for the index's distances")
    fit.add_argument("--context", type=_at_least(2), default=256)
    fit.add_argument("--stride", type=_at_least(1), default=128)
    _common_model_flags(fit)
    _json_flag(fit)

    train = sub.add_parser("train-gates", help="train a method's adapter (the Memorizing Transformer's per-head "
                                               "gates on documents, SPALM's gate on a datastore's documents, a "
                                               "plug-in's)")
    train.add_argument("--method", choices=method_names(),
                       help="a trainable method (`knn-explorer methods`); default: the first that learns from "
                            "what is given, --docs or --datastore")
    train.add_argument("--model", required=True)
    train.add_argument("--docs", nargs="+", metavar="PATH", help="files and/or folders to learn from (a method that "
                                                                 "learns from documents)")
    train.add_argument("--datastore", help="the datastore whose documents (and memory) it learns from (a method "
                                           "that learns from a datastore)")
    train.add_argument("--out", required=True, type=Path, help="adapter file to write (.safetensors)")
    train.add_argument("--name", help="catalogue the adapter under this name (default: the file's name)")
    train.add_argument("--memory-layer", type=int, help="0-based layer with the memory (default: at 3/4 depth)")
    train.add_argument("--memory-size", type=_at_least(1), default=65_536)
    train.add_argument("--k", type=_at_least(1), default=32)
    train.add_argument("--segment", type=_at_least(2), default=128, help="tokens per segment or window")
    train.add_argument("--epochs", type=_at_least(1), default=1)
    train.add_argument("--lr", type=_positive, help="Adam learning rate (default: the method's, e.g. 0.05 for the "
                                                    "Memorizing Transformer, 0.01 for SPALM)")
    train.add_argument("--segments-per-step", type=_at_least(1), default=8, help="segments whose gradients make one update")
    _common_model_flags(train)
    _json_flag(train)

    methods = sub.add_parser("methods", help="list the methods (built-in and installed plug-ins)")
    _json_flag(methods)

    remove = sub.add_parser("remove", help="delete a datastore (or an unfinished build)")
    remove.add_argument("name")

    rebuild = sub.add_parser("rebuild-catalog", help="rebuild a damaged catalog from the datastore folders "
                                                     "(the damaged file is kept aside)")
    _json_flag(rebuild)

    desktop = sub.add_parser("install-desktop", help="add the app to this user's desktop menus (launcher entry, "
                                                     "icon, metainfo under $XDG_DATA_HOME)")
    desktop.add_argument("--uninstall", action="store_true", help="remove what install-desktop installed")
    _json_flag(desktop)
    return parser


# Range checks live in the parser, so a bad flag is refused before a model is loaded or run.
def _at_least(minimum: int):
    def integer(text: str) -> int:
        value = int(text)  # a ValueError reads "invalid integer value: 'x'"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return integer


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], not {text}")
    return value


_positive.__name__ = _fraction.__name__ = "number"


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")


def _one_document_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--one-document", action="store_true",
                        help="read a folder's files as ONE document, in path order, joined by a blank line: the "
                             "Memorizing Transformer's memory then spans them (default: its memory holds one file "
                             "at a time); other methods read the same tokens either way")


def _common_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"],
                        help="where the model runs (and, for build, where the index is trained)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model repository's own code to run")


def _method_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datastore", help="datastore name (see `knn-explorer list`)")
    parser.add_argument("--method", default=None, choices=method_names(),
                        help="default: knnlm with a datastore, none without (`knn-explorer methods` lists them)")
    parser.add_argument("--k", type=_at_least(1), default=32)
    # None: the datastore's fitted value (`knn-explorer fit`), else the method's default (λ 0.25, T 1)
    parser.add_argument("--lambda", dest="lambda_", type=_fraction, default=None,
                        help="weight of p_kNN (default: the datastore's fitted λ, else 0.25)")
    parser.add_argument("--lambda-mode", default="fixed", choices=["fixed", "entropy"])
    parser.add_argument("--temperature", type=_positive, default=None,
                        help="kNN softmax temperature T (default: the datastore's fitted T, else 1)")
    parser.add_argument("--approximate", action="store_true",
                        help="use the index's distances instead of recomputing them from stored keys")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="any setting of the method (repeatable; `knn-explorer methods --json` lists them)")


def _memory_flags(parser: argparse.ArgumentParser, window: bool = True) -> None:
    group = parser.add_argument_group("Memorizing Transformer (--method memtrf)")
    group.add_argument("--memory-layer", type=int, help="0-based layer with the memory (default: at 3/4 depth)")
    if window:  # a memory-size sweep sets the size itself
        group.add_argument("--memory-size", type=_at_least(1), default=65_536, help="tokens the memory holds (default 65536)")
    group.add_argument("--memory-mode", default="gated", choices=["gated", "joint"],
                       help="gated: learned per-head gates (the paper); joint: one softmax over local and "
                            "retrieved keys, no training")
    group.add_argument("--adapter", type=Path, help="trained gates (train-gates output); the demo model has its own")
    if window:
        group.add_argument("--window", type=_at_least(2), help="tokens local attention sees (generation) or per segment "
                                                      "(eval --method memtrf, default 128)")


# ---- commands --------------------------------------------------------------------------------
def cmd_gui(args) -> int:
    size = None
    if getattr(args, "screenshot", None) is not None:
        from .gui.screenshot import parse_size

        try:
            size = parse_size(args.size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.screenshot.suffix.lower() != ".png":
            raise UsageError(f"--screenshot writes a PNG: name it .png, not '{args.screenshot.name}'")
    no_display = not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))
    if sys.platform.startswith("linux") and no_display:
        # Qt would abort the process with a multi-line plugin error instead.
        raise UsageError("no display found (DISPLAY and WAYLAND_DISPLAY are unset); run it on a desktop, "
                         "under xvfb-run, or with QT_QPA_PLATFORM=offscreen")
    if size is not None:
        return _screenshot(args.screenshot, size, args.page)
    from .gui.app import run

    return run()


def _screenshot(path: Path, size: tuple[int, int], page: str) -> int:
    from .gui.screenshot import ScreenshotError, take

    try:
        written = take(path, size, page)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {written} ({size[0]}x{size[1]}, {page})")
    return 0


def _compression_flags(command) -> None:
    command.add_argument("--pca", type=_at_least(0), default=0, metavar="DIM",
                         help="reduce the keys to DIM dimensions by PCA (queries are projected the same way)")
    command.add_argument("--prune", type=_at_least(0), default=0, metavar="K",
                         help="merge each entry with those of its K nearest neighbours that predict the same token")


def cmd_compress(args) -> int:
    from .core.datastore.catalog import Catalog
    from .core.datastore.compress_existing import compress_datastore
    from .core.datastore.compression import Compression

    m = compress_datastore(Catalog(), args.source, args.name, Compression(pca_dim=args.pca, prune_k=args.prune),
                           index=args.index, on_progress=_progress_printer())
    c = m["compression"]
    summary = {"name": m["name"], "from": args.source, "entries": m["entries"], "dim": m["dim"],
               "index": m["index_description"], "compression": c}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    applied = [f"PCA {c['input_dim']} → {c['pca_dim']} ({c['explained']:.1%} of the variance)"] if c.get("pca_dim") else []
    if c.get("prune_k"):
        applied.append(f"pruned {c['entries_before']:,} → {c['entries_after']:,} entries (k = {c['prune_k']})")
    print(f"compressed '{args.source}' into '{m['name']}': {m['entries']:,} entries × {m['dim']}, "
          f"index {m['index_description']}; {'; '.join(applied)}")
    return 0


def cmd_build(args) -> int:
    from .core.datastore.compression import describe_applied
    from .core.datastore.catalog import Catalog
    from .core.datastore.builder import BuildParameters
    from .core.datastore.library import build_datastore, check_can_build

    params = BuildParameters(
        context_length=args.context, stride=args.stride, batch_size=args.batch_size, index=args.index,
        max_file_bytes=int(args.max_file_mb * 1024 * 1024), pca_dim=args.pca, prune_k=args.prune,
        **({"cluster": args.cluster, "shards": args.shards, "encoders": args.encoders or 0, "storage": args.storage}
           if args.cluster else {}),
    )
    check_can_build(Catalog(), args.name, args.docs, params)  # refused at once, before the model loads
    model = _load_model(args)
    params = dataclasses.replace(params, device=str(model.device.type))
    report = build_datastore(Catalog(), args.name, model, args.docs, params, on_progress=_progress_printer())
    fitted = _remember_demo_fit(args, model)
    m = report.manifest
    summary = {
        "name": m["name"], "folder": str(report.folder), "model": m["model"]["name"], "entries": m["entries"],
        "tokens": m["tokens"], "dim": m["dim"], "key_site": m["key_site"]["description"],
        "index": m["index_description"], "seconds": report.seconds, "resumed_from": report.resumed_from,
        "compression": m.get("compression"), "cluster": m.get("cluster") if m.get("shards") else None,
        "shards": len(m["shards"]) if m.get("shards") else None,
        "documents": [{"path": d["path"], "status": "indexed", "tokens": d["token_count"]} for d in report.documents],
        "skipped": [{"path": s["path"], "status": "skipped", "reason": s["reason"]} for s in report.skipped],
        **({"fitted": fitted} if fitted else {}),
    }
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    resumed = f" (resumed from {report.resumed_from})" if report.resumed_from else ""
    compressed = describe_applied(m.get("compression"))
    print(f"built '{m['name']}'{resumed}: {m['entries']:,} entries × {m['dim']} from {len(report.documents)} documents, "
          f"index {m['index_description']}{f' ({compressed})' if compressed else ''}")
    for s in report.skipped:
        print(f"  skipped {s['path']}: {s['reason']}")
    if fitted:
        print(f"  kNN-LM starts from {fitted['describe']}")
    return 0


def _remember_demo_fit(args, model) -> dict | None:
    """The demo datastore (the demo model on resources/demo/docs, default windows) comes with the λ
    and T measured on it when the demo was made; a catalog that cannot take them costs only them."""
    from .core.datastore.catalog import Catalog, CatalogError
    from .core.evaluation.fit import describe_fit, is_demo_build, remember_demo_fit

    if not is_demo_build(args.model, args.docs, args.context, args.stride):
        return None
    try:
        row = remember_demo_fit(Catalog(), args.name, model.name)
    except CatalogError as exc:
        print(f"warning: the demo's fitted λ and T were not kept: {one_line(exc)}", file=sys.stderr)
        return None
    if row is None:
        return None
    return {"lambda": row.lambda_, "temperature": row.temperature, "heldout": row.heldout, "origin": row.origin,
            "describe": describe_fit(row)}


def cmd_list(args) -> int:
    from .core.datastore import build_lock
    from .core.datastore.compression import describe_applied
    from .core.datastore.catalog import Catalog
    from .core.datastore.library import datastore_damage

    catalog = Catalog()
    datastores = []
    for row in catalog.datastores():
        damage = datastore_damage(row)
        datastores.append({
            "name": row.name, "model": row.model_name, "entries": row.entries, "dim": row.dim,
            "size_mb": round(row.size_bytes / 2**20, 2), "index": row.index_description,
            "compression": row.compression, "location": row.location, "cluster": row.cluster, "shards": row.shards,
            "created": row.created.isoformat(timespec="seconds"), "status": "damaged" if damage else "complete",
            **({"reason": damage} if damage else {}), "folder": row.folder,
            "documents": [
                {"path": d.path, "status": d.status, **({"reason": d.reason} if d.reason else {"tokens": d.tokens})}
                for d in row.documents
            ],
        })
    unfinished = []
    for b in catalog.unfinished_builds():
        busy = build_lock.holder(b.name)
        status = "building" if busy else "interrupted" if b.status == "running" else b.status
        unfinished.append({"name": b.name, "status": status, "folder": b.folder,
                           "started": b.started.isoformat(timespec="seconds"), "error": busy or b.error})
    adapters = [{"name": a.name, "kind": a.kind, "model": a.model_name, "path": a.path, "layer": a.details.get("layer"),
                 "gates": a.details.get("gates"), "created": a.created.isoformat(timespec="seconds")}
                for a in catalog.adapters()]
    if args.json:
        print(json.dumps({"datastores": datastores, "unfinished_builds": unfinished, "adapters": adapters},
                         ensure_ascii=False))
        return 0
    if not datastores and not unfinished:
        print("no datastores yet; build one with: knn-explorer build --name NAME --model demo --docs FOLDER")
    for d in datastores:
        skipped = sum(doc["status"] == "skipped" for doc in d["documents"])
        damaged = f"\tDAMAGED: {d['reason']} (remove it and build it again)" if d["status"] == "damaged" else ""
        compressed = f" ({describe_applied(d['compression'])})" if d["compression"] else ""
        where = f"\ton {d['location']}" if d["cluster"] else ""
        print(f"{d['name']}\t{d['entries']:,} entries\t{d['size_mb']} MB\t{d['index']}{compressed}{where}\tmodel {d['model']}\t"
              f"{len(d['documents']) - skipped} documents, {skipped} skipped{damaged}")
    for b in unfinished:
        if b["status"] == "building":
            print(f"{b['name']}\tbuilding now ({b['error']})")
        else:
            print(f"{b['name']}\t{b['status']} build (run the same build command to resume, or remove it)")
    for a in adapters:
        gates = " ".join(f"{g:.3f}" for g in a["gates"] or [])
        print(f"{a['name']}\t{a['kind']} adapter\tmodel {a['model']}\tlayer {a['layer']}\tgates {gates}\t{a['path']}")
    return 0


def cmd_generate(args) -> int:
    from .core.generation.step_generator import GenerationSettings, StepGenerator

    if args.methods:
        return _generate_side_by_side(args)
    name = _method_name(args)
    model = _load_model(args)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, greedy=args.seed is None,
                                  seed=args.seed or 0, neighbours_shown=args.neighbours, context_window=args.window)
    generator = StepGenerator(model, args.prompt, settings, _make_method(args, model, name))
    if not args.json:
        sys.stdout.write(args.prompt)
    for record in generator:
        if args.json:
            print(json.dumps(record.to_json(), ensure_ascii=False), flush=True)
        else:
            sys.stdout.write(record.token)
            sys.stdout.flush()
    if not args.json:
        sys.stdout.write("\n")
    return 0


def _generate_side_by_side(args) -> int:
    from .core.generation.step_generator import GenerationSettings, StepGenerator
    from .core.generation.side_by_side import format_table, generate_side_by_side, to_json

    names = _methods_list(args)
    model = _load_model(args)
    generators = {}
    for name in names:
        method = _make_method(args, model, name)
        settings = GenerationSettings(
            max_new_tokens=args.max_new_tokens, greedy=args.seed is None, seed=args.seed or 0,
            neighbours_shown=args.neighbours, context_window=args.window if method.reads_earlier_text else None)
        generators[name] = StepGenerator(model, args.prompt, settings, method)
    columns = generate_side_by_side(generators)
    if args.json:
        print(json.dumps(to_json(columns, args.prompt), ensure_ascii=False))
    else:
        print(format_table(columns))
    return 0


def _methods_list(args) -> list[str]:
    """--methods as a list of registered names; those that need a datastore need --datastore."""
    from .core.methods import get, names

    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    unknown = [m for m in methods if m not in names()]
    if unknown or not methods:
        raise UsageError(f"--methods takes some of {','.join(names())}, not {args.methods!r}")
    if args.method is not None:
        raise UsageError("give --method or --methods, not both")
    needing = [m for m in methods if get(m).needs_datastore]
    if needing and not args.datastore:
        raise UsageError(f"{' and '.join(needing)} need --datastore NAME (see `knn-explorer list`)")
    return methods


def cmd_eval(args) -> int:
    from .core.evaluation.perplexity import evaluate
    from .core.methods.lm_alone import LM_ALONE

    if args.methods:
        return _eval_comparison(args)
    name = _method_name(args)
    texts = _read_eval_texts(args.text, args.one_document)
    model = _load_model(args)
    method = _make_method(args, model, name)
    if method.reads_earlier_text:  # segments, its memory on against off, as the paper measures it
        return _eval_memorizing(args, model, method, texts)
    result = evaluate(model, "\n\n".join(texts), method, context_length=args.context, stride=args.stride,
                      on_progress=_progress_printer())
    described = method.describe()
    measured = method.results()  # e.g. SPALM's gate
    out = {**result.to_json(), **described, **({"method_results": measured} if measured else {})}
    lines = [f"{result.tokens:,} tokens of {args.text}", f"  LM alone      perplexity {result.ppl_lm:10.3f}"]
    if result.method != LM_ALONE:
        settings = " ".join(f"{key}={value}" for key, value in described.items() if key != "method")
        lines.append(f"  {method.label:<13} perplexity {result.ppl:10.3f}  ({out['relative_change']:+.1%})  {settings}")
    if measured:
        lines.append(_results_line(method.label, measured))
    return _finish(args, out, lines, keep=lambda: _record_eval(args, model, out))


def _eval_comparison(args) -> int:
    """Several methods on the same targets and windows: one table."""
    from .core.datastore.catalog import Catalog
    from .core.evaluation.comparison import compare
    from .core.evaluation.store import keep_comparison
    from .core.methods import labels
    from .core.methods.lm_alone import LM_ALONE

    methods = _methods_list(args)
    texts = _read_eval_texts(args.text, args.one_document)
    model = _load_model(args)
    made = [_make_method(args, model, name) for name in methods]
    result = compare(model, texts, made, context_length=args.context, stride=args.stride,
                     on_progress=_progress_printer())
    settings = {}
    for method in made:
        settings.update({key: value for key, value in method.describe().items() if key != "method"})
    measured = {method.name: method.results() for method in made if method.results()}  # e.g. SPALM's gate
    out = {**result.to_json(), "model": model.name, "datastore": args.datastore, "text": str(args.text),
           "settings": settings, **({"method_results": measured} if measured else {})}
    lines = [f"{result.tokens:,} tokens of {args.text}, windows of {result.context_length} tokens every {result.stride}"]
    for method in result.methods:
        ppl = result.ppl(method)
        change = "" if method == LM_ALONE else f"  ({ppl / result.ppl(LM_ALONE) - 1:+.1%})"
        lines.append(f"  {labels()[method]:<24} perplexity {ppl:10.3f}{change}")
    lines += [_results_line(labels()[name], values) for name, values in measured.items()]
    return _finish(args, out, lines, keep=lambda: keep_comparison(
        Catalog(), result, model.name, args.datastore,
        {"methods": methods, "text": str(args.text), **settings,
         **({"method_results": measured} if measured else {})}))


def _results_line(label: str, values: dict) -> str:
    """"  SPALM: gate_mean 0.9312 · gate_std 0.0612 · …" (a method's `results()`)."""
    shown = [f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in values.items()]
    return f"  {label}: " + " · ".join(shown)


def _eval_memorizing(args, model, method, texts: list[str]) -> int:
    from .core.evaluation.perplexity import evaluate_memorizing

    segment = args.window or 128
    result = evaluate_memorizing(model, method.retrofit, texts, segment_length=segment,
                                 on_progress=_progress_printer())
    described = {key: value for key, value in method.describe().items() if key != "method"}
    out = {**result.to_json(), **described, "segment": segment, "documents": len(texts)}
    return _finish(args, out, keep=lambda: _record_eval(args, model, out), lines=[
        f"{result.tokens:,} tokens of {args.text} in segments of {segment} tokens",
        f"  without memory (same segments)  perplexity {result.ppl_lm:10.3f}",
        f"  Memorizing Transformer          perplexity {result.ppl:10.3f}  ({out['relative_change']:+.1%})  "
        f"layer {out['memory_layer']} · {out['memory_mode']} · memory {out['memory_size']:,} tokens · k={out['k']}"])


def cmd_train_gates(args) -> int:
    from .core.datastore.catalog import Catalog

    if args.out.suffix != ".safetensors":
        raise UsageError("--out must name a .safetensors file")

    def show(step) -> None:
        if args.json:
            print(json.dumps({"step": step.step, "loss": step.loss, "gates": step.gates}), flush=True)
        elif sys.stderr.isatty() or step.step % 50 == 0:
            gates = " ".join(f"{g:.3f}" for g in step.gates)
            sys.stderr.write(f"step {step.step:5d}  loss {step.loss:.3f}  gates {gates}\n")

    _check_writable_file(args.out)
    method = _trainable_method(args)
    trainer = method.trainer
    texts: list[str] = []
    if trainer.learns_from == "datastore":
        if not args.datastore:
            raise UsageError(f"train-gates --method {method.name} needs --datastore NAME (it learns from its documents)")
    else:
        from .core.datastore.documents import Document, iter_documents

        if not args.docs:
            raise UsageError(f"train-gates --method {method.name} needs --docs PATH...")
        texts = [d.text for d in iter_documents([Path(p) for p in args.docs]) if isinstance(d, Document)]
        if not texts:
            raise UsageError(f"no readable documents in {' '.join(args.docs)}")
    from .core.methods import Resources, TrainingSettings

    values = {"layer": args.memory_layer, "memory_size": args.memory_size, "k": args.k}
    settings = method.Settings(**{f: values[f] for f in trainer.settings if values.get(f) is not None})
    model = _load_model(args)
    datastore = None
    if trainer.learns_from == "datastore":
        from .core.datastore.library import open_datastore

        datastore = open_datastore(Catalog(), args.datastore, model)
    training = TrainingSettings(epochs=args.epochs, segment=args.segment, learning_rate=args.lr,
                                segments_per_step=args.segments_per_step)
    trained = method.train(model, settings, Resources(datastore), texts, training, checkpoint=args.out, on_step=show)
    summary, details = trained.summary, trained.details
    name = args.name or args.out.stem
    return _finish(args, {"adapter": str(args.out), "name": name, **details, **summary}, [
        f"trained {summary['steps']} steps in {summary['seconds']:.0f} s on {trained.source}; "
        f"loss {summary['loss_first']:.3f} → {summary['loss_last']:.3f}",
        "gates: " + " ".join(f"{g:.3f}" for g in summary["gates"]),
        f"wrote {args.out} (catalogued as '{name}')"],
        keep=lambda: Catalog().register_adapter(name, method.name, args.out.resolve(), model.name,
                                                model.model_fingerprint, {**details, **summary}))


def _trainable_method(args):
    """The method `train-gates` trains: --method if it is trainable; otherwise the first trainable method
    that learns from what was given (--docs: documents, --datastore: a datastore)."""
    from .core.methods import get, registry

    if args.method is not None:
        method = get(args.method)
        if method.trainer is None:
            offered = ", ".join(m.name for m in registry.trainable()) or "none"
            raise UsageError(f"{method.label} ({args.method}) has nothing to train: use one of {offered}")
        return method
    learns_from = "documents" if args.docs else "datastore" if args.datastore else None
    for method in registry.trainable():
        if method.trainer.learns_from == learns_from:
            return method
    raise UsageError("train-gates needs --docs PATH... or --datastore NAME, and --method for a method that "
                     "learns from them")


def cmd_fit(args) -> int:
    from .core.datastore.catalog import Catalog
    from .core.datastore.documents import path_text
    from .core.datastore.library import open_datastore
    from .core.evaluation.fit import FitError, check_grid, fit_heldout, remember_fit
    from .core.mechanisms.knnlm import KnnLmSettings

    try:
        lambdas, temperatures = _numbers(args.lambdas, "--lambdas"), _numbers(args.temperatures, "--temperatures")
        check_grid(lambdas, temperatures)
    except FitError as exc:
        raise UsageError(str(exc)) from None
    texts = _read_eval_texts(args.heldout)
    settings = KnnLmSettings(k=args.k, exact_distances=not args.approximate)
    model = _load_model(args)
    catalog = Catalog()
    datastore = open_datastore(catalog, args.datastore, model)
    if args.k > datastore.size:
        raise UsageError(f"k = {args.k} is more than the {datastore.size:,} entries of datastore '{args.datastore}'")
    result = fit_heldout(model, datastore, texts, lambdas, temperatures, settings, context_length=args.context,
                         stride=args.stride, on_progress=_progress_printer())
    heldout = path_text(args.heldout.resolve())
    out = {**result.to_json(), "model": model.name, "datastore": args.datastore, "heldout": heldout}
    lam, temperature, ppl = result.best
    before = result.baseline
    grid = f"{len(result.lambdas)} λ ({_span(result.lambdas)}) × {len(result.temperatures)} T " \
           f"({_span(result.temperatures)})"
    lines = [f"{result.tokens:,} tokens of {args.heldout}; LM alone perplexity {result.ppl_lm:.3f}",
             f"grid: {grid}; k = {result.k}, {result.distance} distances (median nearest "
             f"{result.median_nearest_distance:.4g}); {result.seconds['forward']:.0f} s forward pass, "
             f"{result.seconds['grid']:.0f} s retrieval and grid",
             f"  before  λ={before['lambda']:<5g} T={before['temperature']:<6g} perplexity {_fmt_ppl(before['ppl'])}",
             f"  fitted  λ={lam:<5g} T={temperature:<6g} perplexity {_fmt_ppl(ppl)}"
             + (f"  ({ppl / before['ppl'] - 1:+.1%})" if before["ppl"] else ""),
             "best λ at each T:"]
    for t, row in zip(result.temperatures, result.ppl):
        j = int(row.argmin())
        lines.append(f"  T={t:<6g} λ={result.lambdas[j]:<5g} perplexity {_fmt_ppl(float(row[j]))}")
    lines.append(f"kept for '{args.datastore}': generate and eval use λ={lam:g}, T={temperature:g} unless given "
                 "--lambda / --temperature")
    return _finish(args, out, lines, keep=lambda: remember_fit(catalog, args.datastore, model.name, result, heldout))


def _numbers(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} must be numbers separated by commas, not {text!r}") from None


def _span(values: list[float]) -> str:
    return f"{values[0]:g}" if len(values) == 1 else f"{min(values):g} … {max(values):g}"


def _fmt_ppl(value: float | None) -> str:
    import math

    return "∞" if value is None or not math.isfinite(value) else f"{value:.3f}"


def cmd_sweep(args) -> int:
    from .core.datastore.catalog import Catalog
    from .core.datastore.library import open_datastore
    from .core.evaluation.sweeps import SweepValueError, check_sweep_values, collect, method_sweep, sweep

    try:
        values = [float(v) for v in args.values.split(",") if v.strip()]
        if method_sweep(args.param) is not None:
            return _sweep_method(args, values, _read_eval_texts(args.text, args.one_document))
        check_sweep_values(None, args.param, values)  # ranges now; the datastore's size once it is open
    except ValueError as exc:
        reason = str(exc) if isinstance(exc, SweepValueError) else f"--values must be numbers separated by commas, " \
                                                                    f"not {args.values!r}"
        raise UsageError(reason) from None
    texts = _read_eval_texts(args.text, args.one_document)
    if args.param == "memory":
        return _sweep_memory(args, values, texts)
    text = "\n\n".join(texts)
    if not args.datastore:
        raise UsageError(f"--param {args.param} sweeps kNN-LM: it needs --datastore NAME (see `knn-explorer list`)")
    settings = _knn_settings(args)
    model = _load_model(args)
    catalog = Catalog()
    datastore = open_datastore(catalog, args.datastore, model)
    try:
        check_sweep_values(datastore, args.param, values, settings)  # before the model pass, not after it
    except SweepValueError as exc:
        raise UsageError(str(exc)) from None
    progress = _progress_printer()
    collected = collect(model, text, context_length=args.context, stride=args.stride, on_progress=progress)
    result = sweep(datastore, collected, args.param, values, settings, seed=args.seed, on_progress=progress)
    out = {**result.to_json(), "model": model.name, "text": str(args.text)}
    return _print_sweep(args, result, out, keep=lambda: catalog.record_evaluation(
        "sweep", model.name, args.datastore, {"param": args.param, "values": values, "text": str(args.text)}, out))


def _sweep_method(args, values: list[float], texts: list[str]) -> int:
    """--param METHOD.SETTING: the method sweeps itself (`Method.sweep`), its other settings from the flags."""
    from .core.datastore.catalog import Catalog
    from .core.evaluation.sweeps import method_sweep
    from .core.methods import MethodError, UnknownMethod, get

    name, setting = method_sweep(args.param)
    try:
        get(name).check_sweep(setting, values)
    except (UnknownMethod, MethodError) as exc:
        raise UsageError(str(exc)) from None
    _method_name(argparse.Namespace(**{**vars(args), "method": name}))  # a datastore where it needs one
    model = _load_model(args)
    method = _make_method(args, model, name)
    try:
        result = method.sweep(texts, setting, values, context_length=args.context, stride=args.stride,
                              on_progress=_progress_printer())
    finally:
        method.close()
    out = {**result.to_json(), "model": model.name, "text": str(args.text)}
    datastore = args.datastore if get(name).needs_datastore else None
    return _print_sweep(args, result, out, keep=lambda: Catalog().record_evaluation(
        "sweep", model.name, datastore, {"param": args.param, "values": values, "text": str(args.text)}, out))


def _sweep_memory(args, values: list[float], texts: list[str]) -> int:
    from dataclasses import replace

    from .core.datastore.catalog import Catalog
    from .core.mechanisms.memorizing import MemorizingSettings
    from .core.methods import Resources
    from .core.methods.memorizing import MemorizingTransformerMethod
    from .core.evaluation.sweeps import sweep_memory_size

    if args.datastore:
        raise UsageError("--param memory sweeps the Memorizing Transformer's memory; it takes no --datastore")
    model = _load_model(args)
    settings = replace(MemorizingSettings.from_options(args), memory_size=int(max(values)))
    method = MemorizingTransformerMethod(model, settings, Resources(adapter=args.adapter))
    result = sweep_memory_size(model, method, texts, [int(v) for v in values], context_length=args.context,
                               stride=args.stride, on_progress=_progress_printer())
    out = {**result.to_json(), "model": model.name, "text": str(args.text)}
    return _print_sweep(args, result, out, keep=lambda: Catalog().record_evaluation(
        "sweep", model.name, None, {"param": "memory", "values": values, "text": str(args.text)}, out))


def _print_sweep(args, result, out: dict, keep) -> int:
    lines = [f"{result.tokens:,} tokens of {args.text}; LM alone perplexity {result.ppl_lm:.3f}"]
    lines += [f"  {args.param} = {point['value']:<8g} perplexity {point['ppl']:10.3f}  "
              f"({point['ppl'] / result.ppl_lm - 1:+.1%})"
              + (f"  {point['tokens_per_s']:,.0f} tokens/s" if point.get("tokens_per_s") else "")
              for point in result.results]
    lines += [f"  {name}: perplexity {ppl:.3f}" for name, ppl in result.references.items()]
    return _finish(args, out, lines, keep)


def _finish(args, out: dict, lines: list[str], keep=None) -> int:
    """A command's result: `out` as one JSON object with --json, else the lines for a person. Then
    `keep()` records it in the catalog: a catalog that cannot be written costs the record (a warning
    on stderr), never the result, which is already printed."""
    from .core.datastore.catalog import CatalogError

    print(json.dumps(out) if args.json else "\n".join(lines), flush=True)
    if keep is not None:
        try:
            keep()
        except (OSError, CatalogError) as exc:
            print(f"warning: the result above was not kept in the catalog: {one_line(exc)}", file=sys.stderr)
    return 0


def _check_writable_file(path: Path) -> None:
    """Refuse an output path that cannot be written now, before any long work is done for it."""
    import tempfile

    if path.is_dir():
        raise UsageError(f"{path} is a folder; give a file name inside it")
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".knn-explorer-probe-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _read_eval_texts(path: Path, one_document: bool = False) -> list[str]:
    """The held-out documents of `path`; with `one_document`, joined into one (in path order)."""
    from .core.evaluation.comparison import DOCUMENT_SEPARATOR
    from .core.evaluation.perplexity import read_heldout

    try:
        texts = read_heldout(path)
        return [DOCUMENT_SEPARATOR.join(texts)] if one_document else texts
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _record_eval(args, model, out: dict) -> None:
    """Keep the evaluation in the catalog, to list and compare later."""
    from .core.datastore.catalog import Catalog

    Catalog().record_evaluation("eval", model.name, getattr(args, "datastore", None),
                                {"method": out.get("method"), "text": str(args.text)}, out)


def cmd_remove(args) -> int:
    from .core.datastore.catalog import Catalog
    from .core.datastore.library import remove_datastore

    folders = remove_datastore(Catalog(), args.name)
    print(f"removed '{args.name}' ({len(folders)} folder{'s' if len(folders) != 1 else ''} deleted)")
    return 0


def cmd_methods(args) -> int:
    from .core.methods import all_methods

    found = [{"name": m.name, "label": m.label, "needs_datastore": m.needs_datastore, "summary": m.summary,
              "settings": m.Settings().describe(),
              "sweeps": {setting: sweepable.label for setting, sweepable in m.sweeps.items()}} for m in all_methods()]
    return _finish(args, {"methods": found}, [
        f"{m['name']:<10} {m['label']:<24} {'needs a datastore' if m['needs_datastore'] else '':<18} {m['summary']}"
        for m in found])


def cmd_rebuild_catalog(args) -> int:
    from .core.datastore.catalog_recovery import rebuild_catalog

    report = rebuild_catalog()
    lines = [f"rebuilt {report.catalog} from the datastore folders: {len(report.datastores)} datastores, "
             f"{len(report.unfinished)} unfinished builds"]
    lines += [f"  kept the old file as {p}" for p in report.kept_aside]
    lines += [f"  ignored {folder}: {why}" for folder, why in report.ignored]
    return _finish(args, report.to_json(), lines)


# ---- helpers ---------------------------------------------------------------------------------
def _load_model(args):
    from .core.models import load_model
    from .core.runtime import configure_threads

    configure_threads()
    return load_model(args.model, device=args.device, trust_remote_code=args.trust_remote_code)


def _method_name(args) -> str:
    """--method, checked against what the method needs (kNN-LM by default with a datastore)."""
    from .core.methods import get
    from .core.methods.knnlm import KnnLmMethod
    from .core.methods.lm_alone import LM_ALONE

    name = args.method or (KnnLmMethod.name if args.datastore else LM_ALONE)
    method = get(name)
    if method.needs_datastore and not args.datastore:
        raise UsageError(f"--method {name} needs --datastore NAME (see `knn-explorer list`)")
    if args.datastore and not method.needs_datastore:
        raise UsageError(f"--method {name} takes no --datastore (it uses no datastore)")
    return name


def _make_method(args, model, name: str):
    """The registered method `name`, its settings from the flags, its datastore opened if it needs one."""
    from .core.datastore.catalog import Catalog
    from .core.datastore.library import open_datastore
    from .core.methods import Resources, get

    method = get(name)
    settings = _fitted_defaults(args, method.Settings.from_options(args))
    settings = _with_overrides(settings, getattr(args, "setting", []))
    datastore = open_datastore(Catalog(), args.datastore, model) if method.needs_datastore else None
    return method(model, settings, Resources(datastore, getattr(args, "adapter", None)))


def _fitted_defaults(args, settings):
    """kNN-LM's λ and T that no flag gave (--lambda, --temperature, --setting): the datastore's
    latest fit (`knn-explorer fit`), if it has one, said on stderr. Other methods' settings as given."""
    from dataclasses import replace

    from .core.datastore.catalog import Catalog, CatalogError
    from .core.evaluation.fit import describe_fit
    from .core.mechanisms.knnlm import KnnLmSettings

    if type(settings) is not KnnLmSettings or not getattr(args, "datastore", None):
        return settings
    named = {pair.partition("=")[0].strip() for pair in getattr(args, "setting", [])}
    unset = [f for f in ("lambda_", "temperature") if getattr(args, f, None) is None and f not in named]
    if not unset:
        return settings
    try:
        row = Catalog().fitted(args.datastore)
    except CatalogError:
        return settings
    if row is None:
        return settings
    settings = replace(settings, **{f: getattr(row, f) for f in unset})
    uses = ", ".join(f"{'λ' if f == 'lambda_' else 'T'}={getattr(settings, f):g}" for f in unset)
    print(f"kNN-LM uses {uses} from '{args.datastore}''s fit: {describe_fit(row)}", file=sys.stderr)
    return settings


def _with_overrides(settings, pairs: list[str]):
    """`settings` with each --setting NAME=VALUE applied (VALUE read as JSON where it parses: 0.5,
    true, null; else as text), validated by the settings class itself."""
    from dataclasses import fields, replace

    known = {f.name for f in fields(settings)}
    changes = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or name.strip() not in known:
            raise UsageError(f"--setting takes NAME=VALUE with NAME one of {', '.join(sorted(known))}, not {pair!r}")
        try:
            changes[name.strip()] = json.loads(text)
        except ValueError:
            changes[name.strip()] = text
    try:
        return replace(settings, **changes)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--setting: {exc}") from None


def _knn_settings(args):
    from .core.mechanisms.knnlm import KnnLmSettings

    return KnnLmSettings.from_options(args)


def _progress_printer():
    """Progress on stderr, only for a person watching a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(progress) -> None:
        sys.stderr.write("\r\033[K" + progress.describe())
        if progress.done >= progress.total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def cmd_install_desktop(args) -> int:
    from .core import desktop_integration as desktop

    if args.uninstall:
        removed = desktop.uninstall()
        if args.json:
            print(json.dumps({"removed": [str(p) for p in removed]}))
        elif removed:
            print(f"removed the launcher ({len(removed)} files under {desktop.data_dir()})")
        else:
            print(f"nothing to remove: the launcher is not installed under {desktop.data_dir()}")
        return 0
    command = desktop.launch_command()
    written = desktop.install(command=command)
    if args.json:
        print(json.dumps({"installed": [str(p) for p in written], "command": command}))
        return 0
    print(f"installed the launcher: {written[0]}")
    print(f"  starts: {' '.join(command)} gui")
    print(f"  icon and metainfo: {len(written) - 1} files under {desktop.data_dir()}")
    return 0


COMMANDS = {"gui": cmd_gui, "build": cmd_build, "compress": cmd_compress, "list": cmd_list, "generate": cmd_generate, "eval": cmd_eval,
            "sweep": cmd_sweep, "fit": cmd_fit, "train-gates": cmd_train_gates, "remove": cmd_remove,
            "rebuild-catalog": cmd_rebuild_catalog, "methods": cmd_methods,
            "install-desktop": cmd_install_desktop}

if __name__ == "__main__":
    sys.exit(main())
