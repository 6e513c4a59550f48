"""The offline sm_90 compile report (`armour-bench cubin`), not yet moved to the armour_bench
package (bench/armour_bench/) that holds the other benchmarks and the `armour-bench` command."""


def __getattr__(name: str):
    # cubin.py writes its report with `from . import record`; the report writer now lives in
    # armour_bench, so that name resolves there (only `armour-bench cubin` and the report use it).
    if name == "record":
        from armour_bench import record
        return record
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
