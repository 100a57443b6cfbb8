"""Repository tools run from the root: code generation (generate.py) and the benchmark (bench)."""
