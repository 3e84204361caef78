// Kernels that only return a fresh tensor (oneDNN's convolution and linear ops) write
// straight into a tile's planned output view: the view's bytes are offered to the next CPU
// allocation of exactly their size made on this thread, which is such a kernel's output.
#pragma once

#include <ATen/core/Tensor.h>

namespace aspen {

// Scope of one kernel call. Offers `view`'s bytes when the view is dense and shares none of
// them with `inputs` (an allocation the kernel makes before its output, of the same size,
// would otherwise overwrite an input it reads); withdraws the offer on exit.
class PlannedOutput {
 public:
  PlannedOutput(const at::Tensor& view, c10::ArrayRef<at::Tensor> inputs);
  ~PlannedOutput();
  PlannedOutput(const PlannedOutput&) = delete;
  PlannedOutput& operator=(const PlannedOutput&) = delete;

  // Puts the kernel's result in the view: nothing to do when the kernel allocated it there
  // in the view's layout, else a copy (the result's layout differs, or no offer was taken).
  void land(const at::Tensor& result) const;

 private:
  const at::Tensor& view_;
  bool offered_ = false;
};

// Puts the offering allocator in front of the CPU allocator; once per process, idempotent.
// Every other allocation passes through to the allocator it replaced.
void install_planned_output_allocator();

}  // namespace aspen
