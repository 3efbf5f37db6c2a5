"""A labelled set for probing: a folder with a sub-folder per class, or a table (CSV / Parquet:
``path``, ``label`` and optionally ``split``), and its seeded train/test split.

Every file ends as a labelled file, a quarantine row (a table row whose file is missing or has
no label; decode failures are added when features are extracted) or a listed skip (a file in a
class folder without one of the plugin's extensions).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from polymae.pipelines.dag import digest

SPLITS = ("train", "test")


@dataclass
class LabelledFile:
    sample_id: str  # path relative to the set's folder (a folder set) or the table's folder
    path: str
    label: str
    split: str = ""  # train | test: given by the table, else drawn by split_labelled


@dataclass
class LabelledSet:
    files: list[LabelledFile]
    quarantine: list[dict[str, str]] = field(default_factory=list)  # path, stage, reason
    skipped: list[dict[str, str]] = field(default_factory=list)  # path, reason

    @property
    def classes(self) -> list[str]:
        return sorted({f.label for f in self.files})

    def labels(self, split: str) -> list[LabelledFile]:
        return [f for f in self.files if f.split == split]

    def fingerprint(self) -> str:
        """sha256 of every file's id, label, split, size and mtime: the probe set's identity."""
        stats = []
        for f in self.files:
            st = os.stat(f.path)
            stats.append((f.sample_id, f.label, f.split, st.st_size, st.st_mtime_ns))
        return digest(stats)


def load_labelled(data: str | Path, extensions: tuple[str, ...]) -> LabelledSet:
    """A folder of class folders, or a ``.csv`` / ``.parquet`` table. Raises ValueError for a
    set that is neither, a table without the needed columns, or one without any usable file."""
    data = Path(data)
    if data.is_dir():
        out = _from_folders(data, extensions)
    elif data.suffix.lower() in (".csv", ".parquet"):
        out = _from_table(data)
    else:
        raise ValueError(f"probe data {str(data)!r}: a folder of class folders, or a .csv / .parquet table")
    if not out.files:
        raise ValueError(f"probe data {str(data)!r}: no labelled files (quarantined: {len(out.quarantine)}, "
                         f"skipped: {len(out.skipped)})")
    return out


def _from_folders(root: Path, extensions: tuple[str, ...]) -> LabelledSet:
    out = LabelledSet([])
    for dirpath, _, names in sorted(os.walk(root)):
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(names):
            path = Path(dirpath) / name
            if rel_dir == Path("."):
                out.skipped.append({"path": str(path), "reason": "not in a class folder"})
            elif not name.lower().endswith(extensions):
                out.skipped.append({"path": str(path), "reason": f"not one of the plugin's extensions {extensions}"})
            else:  # the class is the top-level folder under the root
                out.files.append(LabelledFile(str(path.relative_to(root)), str(path), rel_dir.parts[0]))
    return out


def _from_table(table_path: Path) -> LabelledSet:
    table = pq.read_table(table_path) if table_path.suffix.lower() == ".parquet" else pacsv.read_csv(
        table_path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                         column_types={"label": "string", "path": "string"}))
    missing = [c for c in ("path", "label") if c not in table.column_names]
    if missing:
        raise ValueError(f"probe table {str(table_path)!r}: no column {', '.join(missing)}; it has "
                         f"{', '.join(table.column_names)} (needs path, label; optional split)")
    out = LabelledSet([])
    base = table_path.parent.resolve()
    for i, row in enumerate(table.to_pylist()):
        rel = row["path"]
        path = rel if rel and os.path.isabs(rel) else str(base / (rel or ""))
        split = (row.get("split") or "").strip().lower()
        label = row["label"]
        reason = ("no path" if not rel else "no such file" if not os.path.isfile(path)
                  else "no label" if label is None or str(label).strip() == ""
                  else f"split {row.get('split')!r}: allowed train, test or empty" if split not in ("", *SPLITS)
                  else "")
        if reason:
            out.quarantine.append({"path": rel or f"row {i}", "stage": "label", "reason": reason})
            continue
        sample_id = os.path.relpath(path, base)
        out.files.append(LabelledFile(sample_id, path, str(label).strip(), split))
    return out


def split_labelled(data: LabelledSet, test_fraction: float, seed: int) -> LabelledSet:
    """Every file without a split gets one: per class, the round(n·fraction) files whose
    sha256(seed, id) is smallest go to test (at least one while the class has two), the rest
    to train. The same seed and files give the same split on every machine."""
    by_class: dict[str, list[LabelledFile]] = {}
    for f in data.files:
        if not f.split:
            by_class.setdefault(f.label, []).append(f)
    for files in by_class.values():
        files.sort(key=lambda f: hashlib.sha256(f"{seed}:{f.sample_id}".encode()).hexdigest())
        n_test = min(len(files) - 1, max(1, round(len(files) * test_fraction))) if len(files) > 1 else 0
        for j, f in enumerate(files):
            f.split = "test" if j < n_test else "train"
    return data
