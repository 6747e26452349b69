"""The user's datastores as a whole: build (or resume), open for a model, list, remove.

Ties the catalog (what exists) to the datastore folders (the data). The rule that keeps them
consistent: a folder enters the catalog only when its manifest says complete; a build that dies
leaves a `running`/`failed` build row and a folder that the next build of the same name resumes.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from .build_lock import DatastoreBusy, datastore_lock, holder
from .catalog import Catalog, DatastoreRow
from .documents import path_from_text
from .folder import COMPLETE, Datastore, DatastoreError, check_compatible, damage, read_manifest
from .builder import BuildParameters, BuildReport, DatastoreBuilder
from ..home import datastores_dir
from ..models import LoadedModel
from ..progress import Cancelled, Interrupted, ProgressCallback


class LibraryError(Exception):
    """A request about datastores that cannot be carried out; str() is a one-line reason."""


@dataclass(frozen=True)
class Compatibility:
    usable: bool
    reason: str | None


def build_datastore(
    catalog: Catalog,
    name: str,
    model: LoadedModel,
    sources: list[str | Path],
    params: BuildParameters = BuildParameters(),
    on_progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BuildReport:
    """Build datastore `name` from `sources`, resuming an interrupted build of the same name.

    Cancelling discards the partial folder; a crash or kill keeps it for the next attempt. The
    name's lock is held throughout: a second build, resume or removal of it is refused at once.
    """
    name = _check_new(catalog, name, sources)
    check_parameters(params)  # refused before anything is recorded
    with datastore_lock(name, "build"):
        _check_new(catalog, name, sources)  # again under the lock: another process may have just finished it
        return _build_locked(catalog, name, model, sources, params, on_progress, should_stop)


def check_can_build(catalog: Catalog, name: str, sources: list[str | Path],
                    params: BuildParameters = BuildParameters()) -> str:
    """The name a build of `name` from `sources` would use, or the one-line reason it cannot start,
    so that a command can refuse before it loads a model."""
    name = _check_new(catalog, name, sources)
    check_parameters(params)
    busy = holder(name)
    if busy is not None:
        raise DatastoreBusy(busy)
    return name


def check_parameters(params: BuildParameters) -> None:
    """Refuse build settings that cannot go together, with a one-line reason."""
    if "://" in params.storage:
        raise LibraryError(f"the storage must be a folder: mount '{params.storage}' (s3fs, gcsfuse, blobfuse) on "
                           "every node and give the mounted folder")
    if params.cluster and params.compression:
        raise LibraryError("PCA and pruning are not available for cluster builds; build without them, or on one machine")


def _check_new(catalog: Catalog, name: str, sources: list[str | Path]) -> str:
    name = validate_name(name)
    missing = [str(s) for s in sources if not Path(s).expanduser().exists()]
    if missing:
        raise LibraryError(f"no such file or folder: {missing[0]}")
    if catalog.datastore(name) is not None:
        raise LibraryError(f"a datastore named '{name}' already exists; remove it first or choose another name")
    return name


def _build_locked(catalog, name, model, sources, params, on_progress, should_stop) -> BuildReport:
    parent = Path(params.storage).expanduser().resolve() if params.storage else datastores_dir()
    folder = _resumable_folder(catalog, name) or parent / f"{_slug(name)}-{secrets.token_hex(3)}"
    builder_class = _cluster_builder() if params.cluster else DatastoreBuilder
    build_id = catalog.start_build(name, folder, model.name, params.to_json())
    builder = builder_class(folder, name, model, list(sources), params, on_progress, should_stop)
    try:
        report = builder.run()
    except Cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        catalog.finish_build(build_id, "cancelled")
        raise
    except Interrupted:  # the folder stays for the next build of this name to resume
        catalog.finish_build(build_id, "interrupted")
        raise
    except BaseException as exc:  # the folder stays: the next build of this name resumes it
        catalog.finish_build(build_id, "failed", error=str(exc) or type(exc).__name__)
        raise
    catalog.register_datastore(report.manifest, folder, report.documents, report.skipped, folder_bytes(folder))
    catalog.finish_build(build_id, "complete", seconds=report.seconds)
    # Older attempts of the same build are now settled too.
    for stale in catalog.unfinished_builds(name):
        catalog.finish_build(stale.id, "resumed")
    return report


def _cluster_builder():
    """The Ray build (an optional extra): imported only when a build asks for a cluster."""
    try:
        from ..cluster.cluster_builder import ClusterBuilder
    except ImportError as exc:
        raise LibraryError(f"building on a Ray cluster needs the cluster extra: pip install "
                           f"'knn-explorer[cluster]' ({exc})") from None
    return ClusterBuilder


def _resumable_folder(catalog: Catalog, name: str) -> Path | None:
    for build in catalog.unfinished_builds(name):
        try:
            manifest = read_manifest(Path(build.folder))
        except DatastoreError:
            continue
        if manifest.get("name") == name:
            return Path(build.folder)
    return None


@dataclass(frozen=True)
class UnfinishedBuild:
    """A build that has not completed, as its catalog row and folder recorded it: how far it got, and
    what resuming it takes (the same model, sources and window settings: `build_datastore` with
    `sources` and `parameters` continues it)."""

    name: str
    folder: Path
    model_name: str
    state: str | None  # reading | encoding | indexing (complete: only cataloguing was left); None: no manifest yet
    fraction: float | None  # share of the state's work on disk (keys encoded); None where not recorded
    sources: tuple[str, ...]  # as the manifest records them (text; `source_paths` finds the files)
    parameters: BuildParameters
    model_fingerprint: str | None
    tokenizer_fingerprint: str | None
    error: str | None  # how the last attempt ended, when it failed

    def source_paths(self) -> list[Path]:
        return [path_from_text(source) for source in self.sources]

    def describe_progress(self) -> str:
        """"encoding 40%", "reading", or "" when nothing was recorded."""
        if self.state is None:
            return ""
        if self.fraction is None:
            return self.state
        return f"{self.state} {self.fraction:.0%}"


def unfinished_build(catalog: Catalog, name: str) -> UnfinishedBuild | None:
    """The unfinished build of `name` that building `name` again would resume (the newest attempt
    whose folder has a manifest), or None when there is none. Reads two small files."""
    builds = catalog.unfinished_builds(name)
    if not builds:
        return None
    for build in builds:
        try:
            manifest = read_manifest(Path(build.folder))
        except DatastoreError:
            continue
        if manifest.get("name") == name:
            break
    else:
        build, manifest = builds[0], {}
    state = manifest.get("state")
    fraction = None
    if state == "encoding" and manifest.get("entries"):
        done = _entries_encoded(Path(build.folder), manifest)
        fraction = min(1.0, max(0.0, done / manifest["entries"]))
    recorded = manifest.get("parameters") or build.parameters or {}
    known = {f.name for f in fields(BuildParameters)}
    return UnfinishedBuild(
        name=name, folder=Path(build.folder), model_name=manifest.get("model", {}).get("name") or build.model_name,
        state=state, fraction=fraction, sources=tuple(manifest.get("sources") or ()),
        parameters=BuildParameters(**{k: v for k, v in recorded.items() if k in known}),
        model_fingerprint=manifest.get("model", {}).get("fingerprint"),
        tokenizer_fingerprint=manifest.get("tokenizer_fingerprint"),
        error=build.error if build.status == "failed" else None,
    )


def _entries_encoded(folder: Path, manifest: dict) -> int:
    """How many entries an interrupted build has on disk: its progress file, or for a cluster build
    the entries of the shards whose encoding finished (a shard resumes from its start)."""
    if manifest.get("shards"):
        return sum(shard.get("entries", 0) for shard in manifest["shards"] if _shard_encoded(folder, shard))
    try:
        return json.loads((folder / "progress.json").read_text(encoding="utf-8")).get("entries", 0)
    except (OSError, ValueError, AttributeError):
        return 0


def _shard_encoded(folder: Path, shard: dict) -> bool:
    try:
        return read_manifest(folder / shard["folder"]).get("state") not in (None, "encoding")
    except (DatastoreError, KeyError, TypeError):
        return False


def resume_problem(build: UnfinishedBuild, model: LoadedModel | None) -> str | None:
    """Why `build` cannot be resumed with `model` now (one line), or None when it can."""
    busy = holder(build.name)
    if busy is not None:
        return busy
    if model is None:
        return "no model is loaded; load the model it was started with"
    if not build.sources:
        return "it stopped before it recorded its sources; remove it and build it again"
    if build.model_fingerprint != model.model_fingerprint or build.tokenizer_fingerprint != model.tokenizer_fingerprint:
        return f"it was started with {build.model_name}; load that model to resume it"
    missing = [path for path in build.source_paths() if not path.exists()]
    if missing:
        return f"its source {missing[0]} is no longer there"
    return None


def open_datastore(catalog: Catalog, name: str, model: LoadedModel | None = None) -> Datastore:
    """Open a complete, catalogued datastore, refusing one built by another model or tokenizer."""
    name = name.strip()
    row = catalog.datastore(name)
    if row is None:
        if catalog.unfinished_builds(name):
            raise LibraryError(f"datastore '{name}' is not complete (its build was interrupted); run the build again to finish it")
        known = ", ".join(r.name for r in catalog.datastores()) or "none"
        raise LibraryError(f"no datastore named '{name}' (known: {known})")
    # searched where the model runs: exact on a GPU that holds the keys (folder.py)
    datastore = _reader(row)(Path(row.folder), device=model.device.type if model is not None else "cpu")
    if model is not None:
        datastore.check_compatible(model.model_fingerprint, model.tokenizer_fingerprint, model.name)
    return datastore


def _reader(row: DatastoreRow) -> type[Datastore]:
    """Datastore, or for a datastore sharded on a Ray cluster the reader that searches its shards."""
    if not row.shards:
        return Datastore
    try:
        from ..cluster.sharded_datastore import ShardedDatastore
    except ImportError as exc:
        raise LibraryError(f"datastore '{row.name}' is sharded on a Ray cluster, which needs the cluster extra: "
                           f"pip install 'knn-explorer[cluster]' ({exc})") from None
    return ShardedDatastore


def compatibility(row: DatastoreRow, model: LoadedModel) -> Compatibility:
    """Whether `row` can be used with `model`, and why not (for greyed-out entries in a list)."""
    try:
        manifest = read_manifest(Path(row.folder))
        if manifest.get("state") != COMPLETE:
            return Compatibility(False, "its folder is not complete")
        damaged = damage(Path(row.folder), manifest)
        if damaged is not None:
            return Compatibility(False, f"damaged: {damaged}; remove it and build it again")
        check_compatible(manifest, model.model_fingerprint, model.tokenizer_fingerprint, model.name)
    except DatastoreError as exc:
        return Compatibility(False, str(exc))
    return Compatibility(True, None)


def datastore_damage(row: DatastoreRow) -> str | None:
    """Why a catalogued datastore's folder cannot be used (cheap: presence and sizes), or None."""
    try:
        manifest = read_manifest(Path(row.folder))
    except DatastoreError as exc:
        return str(exc)
    if manifest.get("state") != COMPLETE:
        return f"its folder is not complete (state: {manifest.get('state')})"
    return damage(Path(row.folder), manifest)


def remove_datastore(catalog: Catalog, name: str) -> list[Path]:
    """Remove a datastore and any unfinished builds of that name; returns the folders deleted.
    Refused while a build of the name runs (in this process or another)."""
    name = name.strip()
    with datastore_lock(name, "remove"):
        row = catalog.datastore(name)
        unfinished = catalog.unfinished_builds(name)
        if row is None and not unfinished:
            raise LibraryError(f"no datastore or unfinished build named '{name}'")
        folders = [Path(row.folder)] if row is not None else []
        folders += [Path(b.folder) for b in unfinished if Path(b.folder) not in folders]
        catalog.remove_datastore(name)
        catalog.abandon_builds(name)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        return folders


def validate_name(name: str) -> str:
    """The name as it will be stored (surrounding spaces dropped: "a" and "a " would look the same
    in every list), or LibraryError with the reason it cannot be used."""
    name = (name or "").strip()
    if not name:
        raise LibraryError("a datastore needs a name")
    if len(name) > 100 or any(c in name for c in "\n\r\t"):
        raise LibraryError("a datastore name must be one line of at most 100 characters")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise LibraryError("a datastore name must be valid text (it holds undecodable bytes)") from None
    return name


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "datastore"
