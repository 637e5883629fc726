"""w2vtk: a wav2vec 2.0 toolkit (Baevski et al., NeurIPS 2020)."""

__version__ = "0.1.0"
