"""Tooling beside the library: the peer benchmark, the workload sets, the volume and training demos
(`python -m nbconv bench | volume | train`). Nothing in the library imports these."""
