// The ops registered in namespace samout (TORCH_LIBRARY_FRAGMENT in each op's <op>.cpp), as typed
// handles for C++ callers: the model calls its ops through PyTorch's dispatcher, as Python does.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace samout::ops {

// samout::<name> with C++ signature Sig. The lookup is a hash-map search: keep the handle
// (`static const auto op = find_op<...>("samout::x");`).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

}  // namespace samout::ops
