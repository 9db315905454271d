"""The benchmark of benchmarks/run.py, in three parts: measuring, reporting, drawing."""
