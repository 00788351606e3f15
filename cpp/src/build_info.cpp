// Version and, in builds without nvcc, the CUDA queries' answers.
#include "awqcore/awqcore.h"

namespace awqcore {

const char* Version() { return AWQCORE_VERSION; }

#ifndef AWQCORE_WITH_CUDA
bool BuiltWithCuda() { return false; }
std::string CudaDeviceInfo() { return "built without CUDA"; }
#endif

}  // namespace awqcore
