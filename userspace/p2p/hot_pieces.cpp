#include "shoal/p2p/hot_pieces.h"

#include "shoal/obs/metrics.h"
#include "shoal/util/buffer_pool.h"

namespace shoal::p2p {
namespace {

// Every engine's pieces together (one engine per daemon outside tests).
obs::Gauge& memory_gauge() {
  static obs::Gauge& g = obs::metrics().gauge("shoal_p2p_piece_memory_bytes",
                                              "Bytes of verified pieces held in memory (p2p.pieceMemory)");
  return g;
}

}  // namespace

HotPieces::~HotPieces() { memory_gauge().add(-static_cast<int64_t>(bytes_)); }

HotPieces::Data HotPieces::wrap(std::string&& bytes) {
  auto* s = new std::string(std::move(bytes));
  return Data(s, [](std::string* p) {
    util::BufferPool::local().give_back(std::move(*p));
    delete p;
  });
}

void HotPieces::put(const std::string& task, uint32_t index, Data data) {
  if (!data) return;
  Key k{task, index};
  auto it = map_.find(k);
  if (it != map_.end()) erase(it);
  uint64_t n = data->size();
  map_.emplace(std::move(k), Entry{std::move(data), 0});
  bytes_ += n;
  pinned_ += n;
  memory_gauge().add(static_cast<int64_t>(n));
  trim();
}

void HotPieces::written(const std::string& task, uint32_t index) {
  auto it = map_.find(Key{task, index});
  if (it == map_.end() || it->second.seq != 0) return;
  pinned_ -= it->second.data->size();
  it->second.seq = next_seq_++;
  evictable_.emplace(it->second.seq, it->first);
  trim();
}

HotPieces::Data HotPieces::get(const std::string& task, uint32_t index) const {
  auto it = map_.find(Key{task, index});
  return it == map_.end() ? nullptr : it->second.data;
}

void HotPieces::drop_task(const std::string& task) {
  for (auto it = map_.lower_bound(Key{task, 0}); it != map_.end() && it->first.first == task;) erase(it++);
}

void HotPieces::erase(std::map<Key, Entry>::iterator it) {
  uint64_t n = it->second.data->size();
  if (it->second.seq == 0)
    pinned_ -= n;
  else
    evictable_.erase(it->second.seq);
  bytes_ -= n;
  memory_gauge().add(-static_cast<int64_t>(n));
  map_.erase(it);
}

// Over the budget: the oldest written pieces go; pinned ones cannot.
void HotPieces::trim() {
  while (bytes_ > budget_ && !evictable_.empty()) erase(map_.find(evictable_.begin()->second));
}

}  // namespace shoal::p2p
