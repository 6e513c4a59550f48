"""Benchmarks behind `armour-bench` (results are committed under the repo's bench/results/)."""
