// A Prometheus-style histogram: counts of observations at or below fixed bounds, their
// sum and their count. Thread-safety: none; its owner locks (ServerCounters).
#ifndef APESERVE_SERVER_HISTOGRAM_H_
#define APESERVE_SERVER_HISTOGRAM_H_

#include <cstdint>
#include <utility>
#include <vector>

namespace apeserve::server {

class Histogram {
 public:
  // `bounds` ascending; an observation above the last lands in +Inf only.
  explicit Histogram(std::vector<double> bounds)
      : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {}

  // Latency buckets in seconds, from 1 ms to 2 minutes.
  static Histogram Seconds() {
    return Histogram(
        {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120});
  }

  void Observe(double value) {
    for (size_t i = 0; i < bounds_.size(); ++i) {
      if (value <= bounds_[i]) ++counts_[i];
    }
    sum_ += value;
    ++count_;
  }

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // per bound: observations <= it
    double sum = 0;
    uint64_t count = 0;
  };
  Snapshot Take() const { return {bounds_, counts_, sum_, count_}; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

}  // namespace apeserve::server

#endif  // APESERVE_SERVER_HISTOGRAM_H_
