"""armour_kernels.constants as Triton sees it: module-level `tl.constexpr` values.

A @triton.jit function may read a global only when it is a `tl.constexpr` (Triton 3.x refuses
other globals), so the kernels compare their constexpr arguments against these names, e.g.
`if BIAS == BIAS_DENSE:`, never against bare literals. Every value is derived here from the
IntEnums and numbers of armour_kernels/constants.py, the one place they are defined; the host
passes `int(BiasKind.DENSE)` etc. as the constexpr argument.
"""
from __future__ import annotations

import triton.language as tl

from ..constants import LN2 as _LN2
from ..constants import LOG2E as _LOG2E
from ..constants import BiasKind, ValueSource

# Where a value part is read from (ValueSource).
SRC_NONE = tl.constexpr(int(ValueSource.NONE))
SRC_V = tl.constexpr(int(ValueSource.V))
SRC_Q = tl.constexpr(int(ValueSource.Q))
SRC_K = tl.constexpr(int(ValueSource.K))

# How the score bias is given (BiasKind).
BIAS_NONE = tl.constexpr(int(BiasKind.NONE))
BIAS_DENSE = tl.constexpr(int(BiasKind.DENSE))
BIAS_TABLE = tl.constexpr(int(BiasKind.TABLE))

LOG2E = tl.constexpr(_LOG2E)  # exp(x) = exp2(x·log2 e): the kernels work in base 2
LN2 = tl.constexpr(_LN2)
