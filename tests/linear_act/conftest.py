"""The `isa` fixture: a test taking it runs once per CPU dispatch path this CPU supports, under that path."""
import pytest

from armour_kernels import cpu

from dense_cases import ISAS


@pytest.fixture(params=ISAS)
def isa(request):
    with cpu.use_isa(request.param):
        yield request.param
