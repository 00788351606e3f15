// Model::Impl: the mapped file, its config and the weight pointers into it.
#pragma once

#include <memory>

#include "awqbin_file.h"
#include "awqcore/awqcore.h"
#include "model_weights.h"

namespace awqcore {

struct Model::Impl {
  std::unique_ptr<AwqbinFile> file;  // owns the mapping the weights point into
  ModelConfig config;
  ModelWeights weights;
};

}  // namespace awqcore
