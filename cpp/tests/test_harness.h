// A minimal test harness: TEST(name) { CHECK(...); CHECK_LE(err, tol, case);
// CHECK_THROWS(expr, Type, "substr"); }
// Each test binary's main() comes from AWQCORE_TEST_MAIN(); it runs every test
// and prints "N passed, N failed"; exit status 1 if any failed, and
// kSkipReturnCode when the binary has nothing to test on this machine (ctest
// reports it as skipped, not passed).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace awqtest {

constexpr int kSkipReturnCode = 77;  // ctest's SKIP_RETURN_CODE (cpp/tests/CMakeLists.txt)

struct Registry {
  std::vector<std::pair<std::string, std::function<void()>>> tests;
  int failures_in_current = 0;
  static Registry& Get() {
    static Registry r;
    return r;
  }
};
struct Registrar {
  Registrar(const char* name, std::function<void()> fn) {
    Registry::Get().tests.emplace_back(name, std::move(fn));
  }
};
inline void Fail(const char* file, int line, const std::string& what) {
  std::printf("  FAILED %s:%d: %s\n", file, line, what.c_str());
  Registry::Get().failures_in_current++;
}
inline int RunAll() {
  int passed = 0, failed = 0;
  for (auto& [name, fn] : Registry::Get().tests) {
    Registry::Get().failures_in_current = 0;
    try {
      fn();
    } catch (const std::exception& e) {
      Fail(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    bool ok = Registry::Get().failures_in_current == 0;
    std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", name.c_str());
    (ok ? passed : failed)++;
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}

// The arguments written one after another: the case description of a
// CHECK_LE, e.g. Case("out=", 7, " in=", 96, " token=", t).
template <typename... Args>
std::string Case(const Args&... args) {
  std::ostringstream text;
  (text << ... << args);
  return text.str();
}

// max|a - b| / max|b| (max|a - b| when b is all zero): the normwise relative
// error the tests print and compare with their tolerances.
inline double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

// u = 2^-24, the unit roundoff of f32, and gamma(n) = n u / (1 - n u): a sum of
// n f32 terms in any order is within gamma(n) * sum|terms| of the exact sum,
// the a-priori bound the kernel tests build their tolerances from.
constexpr double kUnitRoundoff = 5.9604644775390625e-08;
inline double Gamma(int n) { return n * kUnitRoundoff / (1.0 - n * kUnitRoundoff); }

}  // namespace awqtest

#define TEST(name)                                                     \
  static void test_##name();                                           \
  static awqtest::Registrar registrar_##name(#name, test_##name);      \
  static void test_##name()

#define CHECK(cond)                                                          \
  do {                                                                       \
    if (!(cond)) awqtest::Fail(__FILE__, __LINE__, "CHECK(" #cond ")");      \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                     \
  do {                                                                            \
    double a_ = (a), b_ = (b);                                                    \
    if (!(std::fabs(a_ - b_) <= (tol)))                                           \
      awqtest::Fail(__FILE__, __LINE__,                                           \
                    "CHECK_NEAR(" #a ", " #b "): " + std::to_string(a_) + " vs " + \
                        std::to_string(b_));                                      \
  } while (0)

// value <= bound, else a failure that prints both numbers and `what`, a
// string naming the case (shape, group size, token, ...), so a failure inside
// nested loops says which case failed and by how much. NaN fails.
#define CHECK_LE(value, bound, what)                                                    \
  do {                                                                                  \
    const double value_ = (value), bound_ = (bound);                                    \
    if (!(value_ <= bound_)) {                                                          \
      char numbers_[96];                                                                \
      std::snprintf(numbers_, sizeof(numbers_), "%.6g > %.6g", value_, bound_);         \
      awqtest::Fail(__FILE__, __LINE__,                                                 \
                    std::string("CHECK_LE(" #value ", " #bound "): ") + numbers_ + " [" + \
                        std::string(what) + "]");                                       \
    }                                                                                   \
  } while (0)

// The expression must throw `type` whose what() contains `substr`.
#define CHECK_THROWS(expr, type, substr)                                                  \
  do {                                                                                    \
    try {                                                                                 \
      (void)(expr);                                                                       \
      awqtest::Fail(__FILE__, __LINE__, "no exception from " #expr);                      \
    } catch (const type& e_) {                                                            \
      if (std::string(e_.what()).find(substr) == std::string::npos)                      \
        awqtest::Fail(__FILE__, __LINE__,                                                 \
                      std::string("message '") + e_.what() + "' lacks '" + (substr) + "'"); \
    } catch (const std::exception& e_) {                                                  \
      awqtest::Fail(__FILE__, __LINE__, std::string("wrong exception type: ") + e_.what()); \
    }                                                                                     \
  } while (0)

#define AWQCORE_TEST_MAIN() \
  int main() { return awqtest::RunAll(); }
