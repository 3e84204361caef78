// kAtenOp tiles: a boxed dispatcher call on views, its result copied into the output box.
#include "aten_call.h"
#include "kernels.h"

namespace aspen {

void run_aten_op(const TileSpec& t) {
  const AtenCall& call = *t.aten_call;
  torch::jit::Stack stack = call.args;  // the call consumes its stack
  call.op.callBoxed(&stack);
  TORCH_INTERNAL_ASSERT(call.result_index < static_cast<int64_t>(stack.size()));
  t.tensors[0].copy_(stack[call.result_index].toTensor());
}

}  // namespace aspen
