from setuptools import find_packages, setup

setup(
    name="w2vtk",
    version="0.1.0",
    description="wav2vec 2.0 toolkit: prepare, pretrain, fine-tune, decode",
    packages=find_packages(include=["w2vtk", "w2vtk.*"]),
    package_data={"w2vtk": ["data/*.txt"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["w2vtk = w2vtk.cli:main"]},
)
