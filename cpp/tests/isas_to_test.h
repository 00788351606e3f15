// The instruction set levels a kernel test runs (cpu_features.h).
#pragma once

#include <cstdio>
#include <vector>

#include "cpu_features.h"

namespace awqtest {

// Every level this build and CPU run (CI's CPU may have fewer: the others
// are named as skipped, once per call).
inline std::vector<awqcore::Isa> IsasToTest() {
  for (awqcore::Isa isa : awqcore::AllIsas()) {
    if (!awqcore::IsaSupported(isa)) {
      std::printf("  %s: not supported by this CPU or build, skipped\n", awqcore::IsaName(isa));
    }
  }
  return awqcore::SupportedIsas();
}

}  // namespace awqtest
