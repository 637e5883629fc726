"""`python -m w2vtk ...`, which torchrun calls: `torchrun --nproc-per-node 2 -m w2vtk pretrain ...`."""
from w2vtk.cli import main

if __name__ == "__main__":
    main()
