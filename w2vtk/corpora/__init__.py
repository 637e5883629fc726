"""Corpora on disk -> manifests and label files (see w2vtk.manifest), one module per corpus.

No click in here: each `prepare_*` function is the library entry point behind a `w2vtk prepare`
command and returns a summary of what it wrote.
"""
