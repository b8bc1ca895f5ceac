// Prefetch of a thread's next weight tile while it computes the current one, shared by the panel GEMMs
// (panel_linear.cpp) and the greedy head's int8 screen (greedy_head.cpp). With few rows a tile's
// arithmetic is too short for the hardware prefetcher to have the next tile's weights in time: on the
// 2-core EPYC dev machine a 16-row decode step of SmolLM2-135M went from 31.5 to 30.3 ms with its GEMMs
// fetching ahead. From 32 rows on it gained nothing, and at 512 rows it cost 7%, hence the row limit.
// Prefetching changes no result.
#pragma once
#include <cstdint>

// up to this many rows a kernel fetches its next tile ahead
constexpr int64_t kPrefetchRows = 16;

// `lines` cache lines from `p` into L2 (locality 2: prefetcht1 on x86), spread evenly over a loop of K
// steps: step() once per k, then finish() for any left (16.16 fixed point, so a count below K spreads too)
struct PrefetchSpread {
  const char* p = nullptr;
  int64_t lines = 0, rate = 0, pos = 0, done = 0;

  PrefetchSpread() = default;
  PrefetchSpread(const char* p_, int64_t lines_, int64_t K)
      : p(p_), lines(lines_), rate(lines_ > 0 ? (lines_ << 16) / K : 0) {}

  inline void step() {
    if (!rate) return;
    pos += rate;
    for (const int64_t until = pos >> 16; done < until; ++done) __builtin_prefetch(p + 64 * done, 0, 2);
  }
  inline void finish() {
    for (; done < lines; ++done) __builtin_prefetch(p + 64 * done, 0, 2);
  }
};

// body(k) for k = 0..K-1 with pf's lines spread over the loop. Without lines the loop carries no prefetch
// code at all: a per-k test of an empty schedule cost 2-3% of a 64-row decode step's GEMMs.
template <class Body>
__attribute__((always_inline)) inline void for_each_k(int64_t K, PrefetchSpread& pf, Body&& body) {
  if (!pf.rate) {
    for (int64_t k = 0; k < K; ++k) body(k);
  } else {
    for (int64_t k = 0; k < K; ++k) {
      pf.step();
      body(k);
    }
  }
  pf.finish();
}

// The next tile of a thread's run, `lines` cache lines from `next`, split among the `row_tiles` row tiles
// that compute the current one; nothing when the thread has no next tile or the call has too many rows.
struct NextTile {
  const char* next = nullptr;
  int64_t lines = 0, row_tiles = 1;

  NextTile(bool has_next, const void* next_, int64_t lines_, int64_t rows, int64_t rows_per_tile) {
    if (has_next && rows <= kPrefetchRows) {
      next = static_cast<const char*>(next_);
      lines = lines_;
      row_tiles = (rows + rows_per_tile - 1) / rows_per_tile;
    }
  }

  // row tile i's share, spread over its K-step loop
  PrefetchSpread share(int64_t i, int64_t K) const {
    if (!lines) return {};
    const int64_t l0 = lines * i / row_tiles, l1 = lines * (i + 1) / row_tiles;
    return PrefetchSpread(next + 64 * l0, l1 - l0, K);
  }
};
