#include "planned_output.h"

#include <c10/core/CPUAllocator.h>

#include <mutex>

namespace aspen {
namespace {

// This thread's offer: the view's bytes, until an allocation of `bytes` takes them. `taken`
// keeps the bytes' address until the scope ends, so that a raw deallocation of them (oneDNN's
// scratchpad, should it ever be the allocation that took the offer) is recognised.
struct Offer {
  void* data = nullptr;
  size_t bytes = 0;
  void* taken = nullptr;
};
thread_local Offer offer;

void keep_planned_bytes(void*) {}

// Set once, by install_planned_output_allocator, before the allocator below is installed.
c10::Allocator* previous_allocator = nullptr;  // serves every allocation but a taken offer
c10::DeleterFnPtr previous_raw_deleter = nullptr;

void release_raw(void* data) {
  if (data != nullptr && data == offer.taken) return;  // the planned buffer's bytes: not ours to free
  previous_raw_deleter(data);
}

class OfferingAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    Offer& o = offer;
    if (o.data != nullptr && n == o.bytes) {
      void* data = o.data;
      o.data = nullptr;
      o.taken = data;
      return {data, data, &keep_planned_bytes, c10::Device(c10::DeviceType::CPU)};
    }
    return previous_allocator->allocate(n);
  }

  c10::DeleterFnPtr raw_deleter() const override { return previous_raw_deleter != nullptr ? &release_raw : nullptr; }

  void copy_data(void* dest, const void* src, size_t count) const override {
    previous_allocator->copy_data(dest, src, count);
  }
};

// Never destroyed: the CPU allocator slot points to it until the process ends.
OfferingAllocator* const offering_allocator = new OfferingAllocator();

bool dense(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

bool overlaps(const at::Tensor& view, const at::Tensor& other) {
  if (!other.defined() || !other.has_storage() || !view.is_alias_of(other)) return false;
  const char* v0 = static_cast<const char*>(view.data_ptr());
  const char* o0 = static_cast<const char*>(other.data_ptr());
  // The extent of `other`'s elements, from its first to one past its last.
  int64_t last = 0;
  for (int64_t d = 0; d < other.dim(); ++d) last += (other.size(d) - 1) * other.stride(d);
  const char* o1 = o0 + (other.numel() == 0 ? 0 : (last + 1) * other.element_size());
  const char* v1 = v0 + view.nbytes();
  return v0 < o1 && o0 < v1;
}

}  // namespace

void install_planned_output_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    previous_allocator = c10::GetCPUAllocator();
    previous_raw_deleter = previous_allocator->raw_deleter();
    c10::SetCPUAllocator(offering_allocator, /*priority=*/0);
  });
}

PlannedOutput::PlannedOutput(const at::Tensor& view, c10::ArrayRef<at::Tensor> inputs) : view_(view) {
  // Another allocator may have been put in front since: then nothing is offered.
  if (c10::GetCPUAllocator() != offering_allocator) return;
  if (!dense(view) || view.numel() == 0) return;
  for (const at::Tensor& input : inputs) {
    if (overlaps(view, input)) return;
  }
  offer = Offer{view.data_ptr(), view.nbytes(), nullptr};
  offered_ = true;
}

PlannedOutput::~PlannedOutput() {
  if (offered_) offer = Offer{};
}

void PlannedOutput::land(const at::Tensor& result) const {
  if (result.data_ptr() != view_.data_ptr()) {
    view_.copy_(result);
  } else if (!same_layout(result, view_)) {
    view_.copy_(result.clone());  // our bytes, in another layout
  }
}

}  // namespace aspen
