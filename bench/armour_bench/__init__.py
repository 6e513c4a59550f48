"""armour_bench: the benchmarks behind the `armour-bench` command (results are committed under
the repository's bench/results/). A project of its own beside the armour_kernels library, which
it measures; the library never imports it."""

__version__ = "0.1.0"
