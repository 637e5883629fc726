"""Manifest scan: `prepare librispeech` over thousands of files against a plain soundfile.info loop.

Ours: w2vtk.corpora.librispeech.prepare_librispeech with `jobs` processes: it walks the tree, reads
the transcripts, reads every audio header and writes the manifests and dictionaries. Reference: a
walk of the same tree and `soundfile.info(path).frames` for each FLAC file, in one process.
"""
from __future__ import annotations

import os
import shutil
import tempfile


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
    else:
        import soundfile

        def run():
            frames = []
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.endswith(".flac"):
                        frames.append(soundfile.info(os.path.join(dirpath, name)).frames)
            return {"files": len(frames)}
    return run
