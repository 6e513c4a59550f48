"""The `isa` fixture: a test taking it runs once per CPU dispatch path this CPU supports, under that path; on
an AMX CPU once more as "amx/brgemm-tiles", the bf16 dense layers on oneDNN's micro-kernel per tile instead
of the AMX task kernel (both run in served models: the task kernel where K is a multiple of 32)."""
import pytest

from armour_kernels import cpu

from dense_cases import ISAS, BRGEMM_TILES


@pytest.fixture(params=ISAS)
def isa(request):
    name, _, variant = request.param.partition("/")
    with cpu.use_isa(name), cpu.use_dense_amx(variant != BRGEMM_TILES):
        yield request.param
