// A process-wide cache of weights transformed once for a CPU kernel (oneDNN's blocked layout, Winograd's G·g·Gᵀ).
//
// Keyed by the weight's identity and version plus the kernel's parameters, so an in-place update of the weight
// (load_state_dict, fold) rebuilds; a weak reference makes a freed weight's entry unusable even when a new tensor
// reuses its address. Bounded: past kLimit entries the dead ones are dropped (all of them, if none is dead).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <functional>
#include <mutex>
#include <unordered_map>

namespace drn::cpu {

class WeightCache {
 public:
  using Params = std::array<int64_t, 6>;

  // The cached transform of `weight` for `params`, built with `build()` on a miss.
  at::Tensor get(const at::Tensor& weight, const Params& params, const std::function<at::Tensor()>& build) {
    const Key key{weight.unsafeGetTensorImpl(), weight.data_ptr(), weight.is_inference() ? -1 : weight._version(),
                  weight.scalar_type(), params};
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = entries_.find(key);
      if (it != entries_.end()) {
        auto alive = it->second.owner.lock();
        if (alive.get() == weight.unsafeGetTensorImpl()) return it->second.value;
        entries_.erase(it);
      }
    }
    at::Tensor value = build();
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() >= kLimit) {
      for (auto it = entries_.begin(); it != entries_.end();) {
        it = it->second.owner.expired() ? entries_.erase(it) : std::next(it);
      }
      if (entries_.size() >= kLimit) entries_.clear();
    }
    entries_.insert_or_assign(key, Entry{Weak(weight.getIntrusivePtr()), value});
    return value;
  }

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  static constexpr size_t kLimit = 1024;

  struct Key {
    const void* impl;
    const void* data;
    int64_t version;
    at::ScalarType dtype;
    Params params;
    bool operator==(const Key& o) const {
      return impl == o.impl && data == o.data && version == o.version && dtype == o.dtype && params == o.params;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = std::hash<const void*>()(k.impl) ^ (std::hash<const void*>()(k.data) << 1);
      h ^= std::hash<int64_t>()(k.version) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
      for (int64_t p : k.params) h ^= std::hash<int64_t>()(p) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
      return h ^ static_cast<size_t>(k.dtype);
    }
  };
  struct Entry {
    Weak owner;
    at::Tensor value;
  };

  std::mutex mutex_;
  std::unordered_map<Key, Entry, KeyHash> entries_;
};

}  // namespace drn::cpu
