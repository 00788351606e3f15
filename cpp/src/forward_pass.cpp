#include "forward_pass.h"

#include "awqcore/awqcore.h"

namespace awqcore {

// The host passes (picks_on_device() false) never get these calls: the
// Session samples their logits on the host.
int ForwardPass::ForwardPick(int, const int*, int, const TokenPick&) {
  throw Error("ForwardPick: this forward pass picks no tokens on a device");
}

void ForwardPass::DecodeStepPick(const int*, const int*, int, const TokenPick*, int*) {
  throw Error("DecodeStepPick: this forward pass picks no tokens on a device");
}

}  // namespace awqcore
