// Tells whether oneDNN's fused relu may have turned a NaN into 0 during one call.
//
// oneDNN computes a relu post-op as max(x, 0), which gives 0 for NaN where eager keeps NaN.
// On x86 that max (maxps) raises the invalid-operation flag for a NaN operand, as every
// operation that makes a NaN out of numbers does (inf - inf, 0 * inf); the flag is sticky
// and per thread (MXCSR). A kernel that fuses the relu clears the flag before the call and
// reads it after: if it rose, the request's results may differ from eager's and it runs
// again with the relu as its own NaN-keeping pass (Runtime, bindings.cpp's run_program).
// That the flag rises on this machine for each form the kernel calls is checked once per
// process before any relu is fused (kernels_window.cpp).
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace aspen {

class LostNanWatch {
 public:
#if defined(__x86_64__) || defined(__i386__)
  static constexpr bool kAvailable = true;
  // Clears the calling thread's invalid flag, remembering whether it was up.
  LostNanWatch() : before_(_mm_getcsr()) { _mm_setcsr(before_ & ~_MM_EXCEPT_INVALID); }
  // Puts the flag back up if it was; a flag raised meanwhile stays up.
  ~LostNanWatch() {
    if ((before_ & _MM_EXCEPT_INVALID) != 0) _mm_setcsr(_mm_getcsr() | _MM_EXCEPT_INVALID);
  }
  // Whether an operation on this thread made or met a NaN since construction.
  bool saw_nan() const { return (_mm_getcsr() & _MM_EXCEPT_INVALID) != 0; }

 private:
  const unsigned before_;
#else
  // No flag to read: relus stay NaN-keeping passes.
  static constexpr bool kAvailable = false;
  LostNanWatch() = default;
  bool saw_nan() const { return true; }
#endif

 public:
  LostNanWatch(const LostNanWatch&) = delete;
  LostNanWatch& operator=(const LostNanWatch&) = delete;
};

}  // namespace aspen
