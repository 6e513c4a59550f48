// The serving graph runner (see graph_runner.h and armour_kernels/runner.py).
//
// Why: inductor's Python wrapper spends ~6-9 µs around every op call it makes (boxing the arguments
// from Python, size / alignment asserts, reinterpret_tensor views); a served LeViT-128S at batch 1 makes
// ~60 of them, ~15% of its time. Here each step pushes its arguments onto one reused stack and calls the
// operator through the dispatcher boxed (~0.3 µs for a view, ~1 µs for a dense call plus its kernel).
//
// A program is a list of steps over numbered slots (IValues): each step calls one operator on constants
// (converted once, from the operator's schema) and slots, stores its returns in slots and clears the
// slots it used last, so intermediates are freed as early as in eager mode. A constant tensor that a list
// argument takes beside computed ones has a slot of its own, set at the start of each run.
#include "runtime/graph_runner.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace armour {
namespace {

namespace py = pybind11;

// How a step's argument is given; the same numbers as armour_kernels/runner.py's ArgKind.
enum class ArgKind : int64_t {
  kConstant = 0,            // a value converted once (payload: the Python value)
  kSlot = 1,                // a slot's value (payload: slot number)
  kTensorList = 2,          // Tensor[] from slots (payload: slot numbers)
  kOptionalTensorList = 3,  // Tensor?[] from slots (payload: slot numbers, -1 for None)
};

struct StepArg {
  ArgKind kind = ArgKind::kConstant;
  c10::IValue value;
  int64_t slot = -1;
  std::vector<int64_t> slots;
};

struct Step {
  std::string label;                     // the graph node's name, for errors
  std::optional<c10::OperatorHandle> op;  // none: slot `item_of`'s list item `item`
  int64_t item_of = -1;
  int64_t item = -1;
  std::vector<StepArg> args;
  std::vector<int64_t> outs;   // the slot of each return, -1 where a return is not used
  std::vector<int64_t> frees;  // slots this step reads last
};

class GraphRunner {
 public:
  GraphRunner(const py::list& steps, int64_t num_slots, std::vector<int64_t> inputs, std::vector<int64_t> outputs,
              const std::vector<std::pair<int64_t, at::Tensor>>& constant_slots)
      : num_slots_(num_slots), inputs_(std::move(inputs)), outputs_(std::move(outputs)) {
    for (const auto& item : steps) steps_.push_back(parse_step(item.cast<py::tuple>()));
    for (int64_t s : inputs_) check_slot(s, "input");
    for (int64_t s : outputs_) check_slot(s, "output");
    for (const auto& [slot, tensor] : constant_slots) {
      check_slot(slot, "constant");
      constant_slots_.emplace_back(slot, tensor);
    }
  }

  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs) { return run_steps(inputs, nullptr); }

  // run() that also returns each step's wall time in ns (a steady clock read between steps: what the
  // op took with its dispatch, argument pushing and freeing; ~20 ns of it the clock).
  std::pair<std::vector<at::Tensor>, std::vector<int64_t>> run_timed(const std::vector<at::Tensor>& inputs) {
    std::vector<int64_t> times(steps_.size());
    auto out = run_steps(inputs, times.data());
    return {std::move(out), std::move(times)};
  }

  // Each step's (label, operator name): what run_timed's times belong to.
  std::vector<std::pair<std::string, std::string>> step_names() const {
    std::vector<std::pair<std::string, std::string>> names;
    for (const Step& step : steps_)
      names.emplace_back(step.label, step.op ? step.op->schema().name() : std::string("list item"));
    return names;
  }

  int64_t num_steps() const { return static_cast<int64_t>(steps_.size()); }

 private:
  std::vector<at::Tensor> run_steps(const std::vector<at::Tensor>& inputs, int64_t* times) {
    TORCH_CHECK(inputs.size() == inputs_.size(), "GraphRunner: expected ", inputs_.size(), " input tensors, got ",
                inputs.size());
    c10::InferenceMode inference;  // no autograd or view tracking between the kernels
    std::vector<c10::IValue> slots(num_slots_);
    for (size_t i = 0; i < inputs.size(); ++i) slots[inputs_[i]] = inputs[i];
    for (const auto& [slot, value] : constant_slots_) slots[slot] = value;
    std::vector<c10::IValue> stack;
    stack.reserve(16);
    auto last = times ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    for (const Step& step : steps_) {
      stack.clear();
      if (!step.op) {
        stack.push_back(slots[step.item_of].toListRef().at(step.item));
      } else {
        push_args(step, slots, stack);
        try {
          step.op->callBoxed(stack);
        } catch (const c10::Error& e) {
          TORCH_CHECK(false, "GraphRunner: node ", step.label, " (", step.op->schema().name(), ") failed: ",
                      e.what_without_backtrace());
        }
      }
      for (size_t i = 0; i < step.outs.size() && i < stack.size(); ++i) {
        if (step.outs[i] >= 0) slots[step.outs[i]] = std::move(stack[i]);
      }
      for (int64_t s : step.frees) slots[s] = c10::IValue();
      if (times) {
        const auto now = std::chrono::steady_clock::now();
        *times++ = std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count();
        last = now;
      }
    }
    std::vector<at::Tensor> out;
    out.reserve(outputs_.size());
    for (int64_t s : outputs_) out.push_back(slots[s].toTensor());
    return out;
  }

  void check_slot(int64_t slot, const char* what) const {
    TORCH_CHECK(slot >= 0 && slot < num_slots_, "GraphRunner: ", what, " slot ", slot, " outside 0..", num_slots_ - 1);
  }

  // (label, qualified op name, overload, args, outs, frees) or (label, "", "", [(slot kind, list slot)], outs, frees,
  // item) for an item of a returned list.
  Step parse_step(const py::tuple& spec) {
    TORCH_CHECK(spec.size() == 6 || spec.size() == 7, "GraphRunner: a step has 6 or 7 fields, got ", spec.size());
    Step step;
    step.label = spec[0].cast<std::string>();
    const auto name = spec[1].cast<std::string>();
    const auto overload = spec[2].cast<std::string>();
    const auto args = spec[3].cast<py::list>();
    step.outs = spec[4].cast<std::vector<int64_t>>();
    step.frees = spec[5].cast<std::vector<int64_t>>();
    for (int64_t s : step.outs) {
      if (s >= 0) check_slot(s, "return");
    }
    for (int64_t s : step.frees) check_slot(s, "freed");
    if (name.empty()) {
      TORCH_CHECK(spec.size() == 7 && args.size() == 1 && step.outs.size() == 1,
                  "GraphRunner: an item step takes one list slot, one return and an index (", step.label, ")");
      step.item_of = args[0].cast<py::tuple>()[1].cast<int64_t>();
      check_slot(step.item_of, "list");
      step.item = spec[6].cast<int64_t>();
      return step;
    }
    step.op = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const auto& schema = step.op->schema();
    TORCH_CHECK(args.size() == schema.arguments().size(), "GraphRunner: ", step.label, " gives ", args.size(),
                " arguments to ", schema.name(), ", which takes ", schema.arguments().size());
    TORCH_CHECK(step.outs.size() <= schema.returns().size(), "GraphRunner: ", step.label, " names ", step.outs.size(),
                " returns of ", schema.name(), ", which has ", schema.returns().size());
    for (size_t i = 0; i < args.size(); ++i) {
      const auto arg = args[i].cast<py::tuple>();
      StepArg parsed;
      parsed.kind = static_cast<ArgKind>(arg[0].cast<int64_t>());
      switch (parsed.kind) {
        case ArgKind::kConstant:
          parsed.value = torch::jit::toIValue(arg[1], schema.arguments()[i].real_type());
          break;
        case ArgKind::kSlot:
          parsed.slot = arg[1].cast<int64_t>();
          check_slot(parsed.slot, "argument");
          break;
        case ArgKind::kTensorList:
        case ArgKind::kOptionalTensorList:
          parsed.slots = arg[1].cast<std::vector<int64_t>>();
          for (int64_t s : parsed.slots) {
            if (s >= 0 || parsed.kind == ArgKind::kTensorList) check_slot(s, "list argument");
          }
          break;
        default:
          TORCH_CHECK(false, "GraphRunner: unknown argument kind ", arg[0].cast<int64_t>(), " in ", step.label);
      }
      step.args.push_back(std::move(parsed));
    }
    return step;
  }

  static void push_args(const Step& step, const std::vector<c10::IValue>& slots, std::vector<c10::IValue>& stack) {
    for (const StepArg& arg : step.args) {
      switch (arg.kind) {
        case ArgKind::kConstant:
          stack.push_back(arg.value);
          break;
        case ArgKind::kSlot:
          stack.push_back(slots[arg.slot]);
          break;
        case ArgKind::kTensorList: {
          c10::List<at::Tensor> list;
          list.reserve(arg.slots.size());
          for (int64_t s : arg.slots) list.push_back(slots[s].toTensor());
          stack.emplace_back(std::move(list));
          break;
        }
        case ArgKind::kOptionalTensorList: {
          c10::List<std::optional<at::Tensor>> list;
          list.reserve(arg.slots.size());
          for (int64_t s : arg.slots) {
            list.push_back(s < 0 ? std::optional<at::Tensor>() : std::optional<at::Tensor>(slots[s].toTensor()));
          }
          stack.emplace_back(std::move(list));
          break;
        }
      }
    }
  }

  int64_t num_slots_;
  std::vector<int64_t> inputs_;
  std::vector<int64_t> outputs_;
  std::vector<Step> steps_;
  std::vector<std::pair<int64_t, c10::IValue>> constant_slots_;  // constants a tensor list takes beside slots
};

}  // namespace

void bind_graph_runner(py::module& m) {
  py::class_<GraphRunner>(m, "GraphRunner",
                          "An op graph run from C++: steps over numbered slots (armour_kernels/runner.py builds them)")
      .def(py::init<const py::list&, int64_t, std::vector<int64_t>, std::vector<int64_t>,
                    const std::vector<std::pair<int64_t, at::Tensor>>&>(),
           py::arg("steps"), py::arg("num_slots"), py::arg("inputs"), py::arg("outputs"),
           py::arg("constant_slots") = std::vector<std::pair<int64_t, at::Tensor>>())
      .def("run", &GraphRunner::run, "run the graph on the input tensors (inference mode) -> the output tensors",
           py::arg("inputs"), py::call_guard<py::gil_scoped_release>())
      .def("run_timed", &GraphRunner::run_timed,
           "run() that also returns each step's wall time in ns -> (output tensors, times)", py::arg("inputs"),
           py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("step_names", &GraphRunner::step_names, "each step's (graph node, operator name)")
      .def_property_readonly("num_steps", &GraphRunner::num_steps);
}

}  // namespace armour
