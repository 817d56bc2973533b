// TTL deadlines of queued reliable entries: a binary min-heap on the due time.
//
// One timer per (address, seq) with a TTL, pushed when the entry is queued. Entries
// that are acked before their deadline leave their timer behind (lazy deletion): the
// core drops such timers when they come due, and compacts the heap when dead timers
// outnumber the queued entries (Core._compact_timers), so memory stays bounded by the
// queues, not by the traffic.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

struct Timer {
    uint64_t due_ms;   // monotonic milliseconds
    uint64_t seq;      // the entry's sequence in its address
    int32_t addr;      // the address slot
};

class TimerHeap {
  public:
    bool empty() const { return h_.empty(); }
    size_t size() const { return h_.size(); }
    const Timer &top() const { return h_.front(); }

    void push(uint64_t due_ms, int32_t addr, uint64_t seq) {
        h_.push_back(Timer{due_ms, seq, addr});
        std::push_heap(h_.begin(), h_.end(), later);
    }

    void pop() {
        std::pop_heap(h_.begin(), h_.end(), later);
        h_.pop_back();
    }

    // In-place compaction: the caller moves the live timers to the front of slots()
    // and then keeps the first n.
    Timer *slots() { return h_.data(); }
    void keep_first(size_t n) {
        h_.resize(n);
        std::make_heap(h_.begin(), h_.end(), later);
        if (h_.capacity() > 4 * h_.size() + 1024) h_.shrink_to_fit();
    }

  private:
    static bool later(const Timer &a, const Timer &b) { return a.due_ms > b.due_ms; }
    std::vector<Timer> h_;
};
