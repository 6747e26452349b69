"""Rebuild a damaged catalog from the datastore folders, which hold everything it needs.

Each folder's manifest names the datastore, its model and index; documents.jsonl and skipped.json
list its documents. A complete, undamaged folder becomes a datastore row again; any other folder
with a manifest becomes a failed build, which `list` shows and the next build of its name resumes
(or `remove` deletes). The damaged file is kept aside, never deleted. What lives only in the
catalog is lost: the list of recent models, catalogued adapters (their files stay where they
were written) and kept evaluation runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .catalog import Catalog
from .folder import COMPLETE, DatastoreError, damage, read_documents, read_manifest
from ..home import data_home


@dataclass
class RecoveryReport:
    catalog: Path
    kept_aside: list[Path] = field(default_factory=list)
    datastores: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (folder, why)

    def to_json(self) -> dict:
        return {"catalog": str(self.catalog), "kept_aside": [str(p) for p in self.kept_aside],
                "datastores": self.datastores, "unfinished_builds": self.unfinished,
                "ignored": [{"folder": f, "reason": r} for f, r in self.ignored]}


def rebuild_catalog(home: Path | None = None) -> RecoveryReport:
    """Move the catalog (and its WAL files) aside and write a new one from the datastore folders."""
    home = Path(home) if home is not None else data_home()
    path = home / "catalog.sqlite"
    report = RecoveryReport(catalog=path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for suffix in ("", "-wal", "-shm"):
        old = path.with_name(path.name + suffix)
        if old.exists():
            aside = old.with_name(f"{path.name}.damaged-{stamp}{suffix}")
            old.rename(aside)
            report.kept_aside.append(aside)
    catalog = Catalog(path)
    for folder in sorted(p for p in (home / "datastores").glob("*") if p.is_dir()):
        _recover_folder(catalog, folder, report)
    return report


def _recover_folder(catalog: Catalog, folder: Path, report: RecoveryReport) -> None:
    try:
        manifest = read_manifest(folder)
        name = manifest["name"]
    except (DatastoreError, KeyError, TypeError) as exc:
        report.ignored.append((str(folder), str(exc) if isinstance(exc, DatastoreError) else "its manifest has no name"))
        return
    reason = damage(folder, manifest) if manifest.get("state") == COMPLETE else "not complete"
    if reason is None and catalog.datastore(name) is None:
        try:
            skipped = json.loads((folder / "skipped.json").read_text(encoding="utf-8"))
            documents = [asdict(d) for d in read_documents(folder)]
        except (OSError, ValueError, TypeError) as exc:
            reason = f"its document lists are unreadable ({exc})"
        else:
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            catalog.register_datastore(manifest, folder, documents, skipped, size)
            report.datastores.append(name)
            return
    elif reason is None:
        reason = f"a second folder for '{name}'"
    # Anything else is kept as an unfinished build: visible in `list`, resumable or removable.
    build = catalog.start_build(name, folder, manifest.get("model", {}).get("name", "?"),
                                manifest.get("parameters") or {})
    catalog.finish_build(build, "failed", error=f"recovered from its folder: {reason}")
    report.unfinished.append(name)
