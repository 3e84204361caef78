// A prepared call of any ATen operator through the dispatcher: the boxed form
// lets one tile kind run every op an APU rule tiles without a kernel of its own.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace aspen {

struct AtenCall {
  c10::OperatorHandle op;
  torch::jit::Stack args;  // in schema order; tensors are the tile's views
  int64_t result_index;    // which return is the tile's output
};

}  // namespace aspen
