// Python bindings of armour_kernels._C (pybind11). The kernels are in isa_*.cpp, the tensor
// plumbing in ops.cpp; this file only names things and exposes the ISA switch.
#include <torch/extension.h>

#include "kernels/kernel_api.h"
#include "ops.h"

namespace armour {
std::string dispatch_name(Isa isa, GemmUse gemm);
bool parse_dispatch(const std::string& name, Isa* isa, GemmUse* gemm);
std::vector<std::string> supported_dispatch();
}  // namespace armour

namespace {

void set_isa(const std::string& name) {
  armour::Isa isa;
  armour::GemmUse gemm;
  TORCH_CHECK(armour::parse_dispatch(name, &isa, &gemm), "armour_kernels._C.set_isa: unknown ISA '", name,
              "', expected one of scalar, avx2, avx512, avx512bf16 (each optionally +brgemm) or amx");
  TORCH_CHECK(armour::cpu_supports(isa, gemm), "armour_kernels._C.set_isa: this CPU (or torch build) does not support '",
              name, "'; supported: ", c10::Join(", ", armour::supported_dispatch()));
  armour::set_current_isa(isa, gemm);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "armour_kernels CPU kernels (scalar / AVX2 / AVX-512 / AMX, chosen at run time)";
  m.def("attention", &armour::attention_forward, "attention forward: (out, lse)", py::arg("q"), py::arg("k"),
        py::arg("v"), py::arg("bias"), py::arg("bias_index"), py::arg("value"), py::arg("scale"),
        py::arg("mask_diagonal"));
  m.def("attention_backward", &armour::attention_backward, "attention backward: (dq, dk, dv, dbias)",
        py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("bias_index"),
        py::arg("out"), py::arg("lse"), py::arg("value"), py::arg("scale"), py::arg("mask_diagonal"),
        py::arg("need_dbias"));
  m.def("linear_hardswish", &armour::linear_hardswish, "hardswish(x @ weight.T + bias)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("gemm") = "auto");
  m.def("has_onednn_linear", &armour::has_onednn_linear, "whether torch's oneDNN fused linear is available");
  m.def("isa", []() { return armour::dispatch_name(armour::current_isa(), armour::current_gemm()); },
        "the dispatch the kernels run with: ISA, +brgemm (fp32 products on oneDNN) or amx");
  m.def("best_isa", []() { return armour::dispatch_name(armour::best_isa(), armour::best_gemm()); },
        "the dispatch the kernels run with unless set_isa chose another");
  m.def("supported_isas", &armour::supported_dispatch, "dispatch paths this CPU can run, slowest first");
  m.def("set_isa", &set_isa,
        "select the kernel dispatch (scalar, avx2, avx512, avx512bf16, each optionally +brgemm, or amx) for the "
        "whole process");
}
