"""Join prepared subsets into one, e.g. train-clean-100 + train-clean-360 + train-other-500 -> train-960.

usage: python combine_subsets.py DATA_DIR NEW_SUBSET SUBSET [SUBSET ...]

Writes DATA_DIR/NEW_SUBSET.tsv (absolute audio paths, since the subsets have different roots) and the
label files (.wrd, .ltr, ...) that every input subset has, concatenated in the order given.
"""
from __future__ import annotations

import sys
from pathlib import Path

from w2vtk.errors import W2vtkError
from w2vtk.manifest import read_labels, read_manifest, write_subset


def combine(data_dir: Path, new: str, subsets: list[str]) -> int:
    manifests = [read_manifest(data_dir / f"{s}.tsv") for s in subsets]
    label_exts = set.intersection(*({p.suffix[1:] for p in data_dir.glob(f"{s}.*")} - {"tsv"} for s in subsets))
    rows, labels = [], {ext: [] for ext in sorted(label_exts)}
    for subset, m in zip(subsets, manifests):
        rows += [(str(m.abspath(i)), m.sizes[i]) for i in range(len(m))]
        for ext in labels:
            labels[ext] += read_labels(data_dir / f"{subset}.{ext}", len(m), m.source)
    # Every path is absolute, so the root line only needs to be a real folder.
    write_subset(data_dir, new, data_dir.resolve(), rows, labels)
    return len(rows)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        n = combine(Path(argv[0]), argv[1], argv[2:])
    except W2vtkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{argv[1]}: {n} utterances from {', '.join(argv[2:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
