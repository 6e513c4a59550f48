// Python bindings of armour_kernels._C (pybind11). The kernels are in isa_*.cpp, the tensor
// plumbing in attention/host.cpp; ops that are torch operators (attention) are registered with the dispatcher
// (torch_ops/), not here: this file names the rest and exposes the ISA switch.
#include <torch/extension.h>

#include "kernels/kernel_api.h"
#include "attention/host.h"
#include "linear_layer/dense.h"
#include "linear_layer/linear_hardswish.h"
#include "runtime/graph_runner.h"
#include "torch_ops/attention_op.h"

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

// armour_kernels::attention called from eager Python: a typed binding into the dispatcher (the
// op, its autograd and its kernels are the dispatcher's; this is only a cheaper way to call it than
// torch.ops' boxed call, which matches the schema and boxes every argument on each call, ~3 µs of
// a tiny call). Compiled graphs and tensor subclasses call torch.ops (ops/attention.py).
at::Tensor call_attention(const at::Tensor& q, const at::Tensor& k, const std::optional<at::Tensor>& v,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& bias_index,
                          const std::string& value, double scale, bool mask_diagonal) {
  return std::get<0>(armour::attention_op().call(q, k, v, bias, bias_index, value, scale, mask_diagonal));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "armour_kernels CPU kernels (scalar / AVX2 / AVX-512 / AMX, chosen at run time)";
  m.def("call_attention", &call_attention, "armour_kernels::attention(...)[0] through the dispatcher",
        py::arg("q"), py::arg("k"), py::arg("v"), py::arg("bias"), py::arg("bias_index"), py::arg("value"),
        py::arg("scale"), py::arg("mask_diagonal"));
  m.def("linear_hardswish", &armour::linear_hardswish, "hardswish(x @ weight.T + bias)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("gemm") = "auto");
  m.def("dense_layout", &armour::dense_layout,
        "the layout dense_pack chooses for this weight now: fp32-brgemm, bf16-amx or plain", py::arg("weight"));
  m.def("set_dense_amx", &armour::set_dense_amx, py::arg("on"),
        "bf16 dense layers on AMX: the task kernel with the epilogue overlapped (True, the default) or oneDNN's "
        "brgemm then the epilogue per tile (False)");
  m.def("dense_amx_enabled", &armour::dense_amx_enabled, "what set_dense_amx set last (default True)");
  m.def("dense_amx_available", &armour::dense_amx_available,
        "whether the bf16 dense layers' AMX task kernel runs here (compiled, AMX, the amx dispatch)");
  m.def("set_dense_f32", &armour::set_dense_f32, py::arg("on"),
        "fp32 dense layers of at most 64 rows: the AVX-512 task kernel streaming the weight into L2 ahead (True, "
        "the default) or oneDNN's brgemm then the epilogue per tile (False)");
  m.def("dense_f32_enabled", &armour::dense_f32_enabled, "what set_dense_f32 set last (default True)");
  m.def("dense_f32_available", &armour::dense_f32_available,
        "whether the fp32 dense layers' AVX-512 task kernel runs here (compiled, an AVX-512 dispatch with brgemm)");
  m.def("has_onednn_linear", [] { return armour::has_onednn_linear(); },
        "whether torch's oneDNN fused linear is available");
  m.def("has_onednn_linear_bf16", [] { return armour::has_onednn_linear(at::kBFloat16); },
        "whether it also runs bfloat16 on this CPU (oneDNN has bf16 kernels only with AVX512-BF16 or AMX)");
  m.def("isa", []() { return armour::dispatch_name(armour::current_isa(), armour::current_gemm()); },
        "the dispatch the kernels run with: ISA, +brgemm (fp32 products on oneDNN) or amx");
  m.def("best_isa", []() { return armour::dispatch_name(armour::best_isa(), armour::best_gemm()); },
        "the dispatch the kernels run with unless set_isa chose another");
  m.def("supported_isas", &armour::supported_dispatch, "dispatch paths this CPU can run, slowest first");
  m.def("set_isa", &set_isa,
        "select the kernel dispatch (scalar, avx2, avx512, avx512bf16, each optionally +brgemm, or amx) for the "
        "whole process");
  armour::bind_graph_runner(m);
}
