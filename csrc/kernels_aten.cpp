// kAtenOp tiles: a boxed dispatcher call on views. Calls of an op's out= overload
// write the output view directly; others return a result that is copied into it.
#include "aten_call.h"
#include "kernels.h"

namespace aspen {

void run_aten_op(const TileSpec& t) {
  const AtenCall& call = *t.aten_call;
  torch::jit::Stack stack = call.args;  // the call consumes its stack
  call.op.callBoxed(&stack);
  TORCH_INTERNAL_ASSERT(call.result_index < static_cast<int64_t>(stack.size()));
  const at::Tensor& result = stack[call.result_index].toTensor();
  const at::Tensor& out = t.tensors[0];
  const bool wrote_in_place = result.data_ptr() == out.data_ptr() && result.sizes() == out.sizes() &&
                              result.strides() == out.strides();
  if (!wrote_in_place) out.copy_(result);
}

}  // namespace aspen
