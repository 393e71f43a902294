"""The parts of the aigc benchmark, one module each; ``benchmarks/bench.py`` runs them and writes the report."""
