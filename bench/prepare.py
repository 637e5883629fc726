"""Manifest scan: `prepare librispeech` over thousands of files against soundfile.info over the same files.

Ours: w2vtk.corpora.librispeech.prepare_librispeech with `jobs` processes: it walks the tree, reads
the transcripts, reads every audio header and writes the manifests and dictionaries.
Reference ("ref"): a walk of the same tree, then `soundfile.info(path).frames` of every FLAC file in
a pool of `jobs` processes started for the call (as ours starts its own), in chunks. "ref_1_process":
the walk and the same reads in one process.
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile


def flac_paths(root: str) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths += [os.path.join(dirpath, name) for name in sorted(filenames) if name.endswith(".flac")]
    return paths


def frames(path: str) -> int:
    import soundfile

    return soundfile.info(path).frames


def build(side: str, spec: dict):
    root = spec["corpus"]
    if side == "ours":
        from w2vtk.corpora.librispeech import prepare_librispeech

        def run():
            out = tempfile.mkdtemp(prefix="w2vtk-bench-prepare-")
            try:
                summary = prepare_librispeech(root, out, jobs=spec["jobs"])
            finally:
                shutil.rmtree(out, ignore_errors=True)
            return {"files": sum(s.files for s in summary.subsets)}
        return run
    import soundfile  # noqa: F401  (imported before the pool forks, as ours imports its reader)

    jobs = spec["jobs"]

    def run():
        paths = flac_paths(root)
        if jobs == 1:
            counts = [frames(p) for p in paths]
        else:
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                counts = pool.map(frames, paths, chunksize=max(1, len(paths) // (jobs * 8)))
        return {"files": len(counts)}
    return run
