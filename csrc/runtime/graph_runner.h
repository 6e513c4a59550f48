// The serving graph runner: an exported model's op graph, run node by node from C++ (no Python and no
// generated glue between the kernels). armour_kernels/runner.py lowers a torch.export graph to its steps.
#pragma once

#include <torch/extension.h>

namespace armour {

// Adds armour_kernels._C.GraphRunner to the extension module.
void bind_graph_runner(pybind11::module& m);

}  // namespace armour
