"""The `isa` fixture: a test taking it runs once per CPU dispatch path this CPU supports, under that path; and
once more on the best path with a dense task kernel as "<path>/brgemm-tiles", the dense layers on oneDNN's
micro-kernel per tile instead of the task kernels (both run in served models: the AMX task where K is a
multiple of 32, the fp32 task for layers of at most 64 rows)."""
import contextlib

import pytest

from armour_kernels import cpu

from dense_cases import ISAS, BRGEMM_TILES


@pytest.fixture(params=ISAS)
def isa(request):
    name, _, variant = request.param.partition("/")
    with cpu.use_isa(name), contextlib.ExitStack() as stack:
        for kind in cpu.DENSE_TASKS:
            stack.enter_context(cpu.use_dense_task(kind, variant != BRGEMM_TILES))
        yield request.param
