// What the CPU micro-benchmarks (isa_bench.cpp, attention_bench.cpp) share:
// clocks, medians, the SIMD levels they compare, interleaved repetitions and
// the command line. Dev tools, not part of the library.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace awqcore::bench {

inline double Seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// CPU time of the calling thread: memory stalls count, time descheduled does
// not, so on a shared machine it measures the kernel rather than the scheduler.
inline double ThreadCpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The SIMD levels this CPU and build run, printed as "levels on this CPU: ..."
// with no newline (the caller appends its settings). The scalar kernels are
// the references, tens of times slower: left out. Exits with status 1 when
// none is left, as there is nothing to compare.
inline std::vector<Isa> SimdLevels() {
  std::vector<Isa> levels = SupportedIsas();
  levels.erase(std::remove(levels.begin(), levels.end(), Isa::kScalar), levels.end());
  if (levels.empty()) {
    std::fprintf(stderr, "no SIMD level on this CPU or build: nothing to compare\n");
    std::exit(1);
  }
  std::printf("levels on this CPU:");
  for (Isa isa : levels) std::printf(" %s", IsaName(isa));
  return levels;
}

struct NothingBetween {
  void operator()() const {}
};

// `reps` repetitions of run(i) over `variants` compared variants, the order
// rotating by one each repetition so that no variant always runs right after
// the same other one (warm caches, clock ramps, a neighbour's load);
// between() runs before each repetition.
template <typename Run, typename Between = NothingBetween>
void Interleaved(size_t variants, int reps, Run&& run, Between&& between = {}) {
  for (int rep = 0; rep < reps; ++rep) {
    between();
    for (size_t j = 0; j < variants; ++j) run((j + rep) % variants);
  }
}

// A benchmark's command line. `specs` lists its flags as the usage line shows
// them: "--name VALUE" takes a value, a bare "--name" is a switch. An unknown
// flag, a missing value or a value that is not an integer where one is read
// prints the problem and the usage line and exits with status 2.
class CommandLine {
 public:
  CommandLine(int argc, char** argv, const std::vector<std::string>& specs) : program_(argv[0]) {
    std::map<std::string, bool> takes_value;
    for (const std::string& spec : specs) {
      const size_t space = spec.find(' ');
      takes_value[spec.substr(0, space)] = space != std::string::npos;
      usage_ += " [" + spec + "]";
    }
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      const auto known = takes_value.find(flag);
      if (known == takes_value.end()) Fail("unknown flag " + flag);
      if (!known->second) {
        values_[flag] = "";
      } else if (i + 1 < argc) {
        values_[flag] = argv[++i];
      } else {
        Fail(flag + " needs a value");
      }
    }
  }

  bool Has(const std::string& flag) const { return values_.count(flag) != 0; }

  std::string Text(const std::string& flag, const std::string& fallback) const {
    return Has(flag) ? values_.at(flag) : fallback;
  }

  int Int(const std::string& flag, int fallback) const {
    if (!Has(flag)) return fallback;
    return ParseInt(values_.at(flag), flag);
  }

  // A comma-separated list of integers ("512,4096").
  std::vector<int> Ints(const std::string& flag, const std::string& fallback) const {
    std::vector<int> out;
    const std::string text = Text(flag, fallback);
    for (size_t begin = 0; begin <= text.size();) {
      const size_t end = std::min(text.find(',', begin), text.size());
      out.push_back(ParseInt(text.substr(begin, end - begin), flag));
      begin = end + 1;
    }
    return out;
  }

  [[noreturn]] void Fail(const std::string& problem) const {
    std::fprintf(stderr, "%s\nusage: %s%s\n", problem.c_str(), program_.c_str(), usage_.c_str());
    std::exit(2);
  }

 private:
  int ParseInt(const std::string& text, const std::string& flag) const {
    char* end = nullptr;
    const long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || value < -(1L << 30) || value > (1L << 30)) {
      Fail(flag + " takes an integer, not '" + text + "'");
    }
    return static_cast<int>(value);
  }

  std::string program_, usage_;
  std::map<std::string, std::string> values_;
};

}  // namespace awqcore::bench
