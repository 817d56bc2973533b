/* A FIFO on a vector with a moving head, for per-address queues.
 *
 * std::deque allocates a 512-byte node and its map as soon as it is constructed; with
 * three queues per address that is ~1.7 KB of heap for every address ever seen (1.7 GB
 * for a million), most of it for queues that stay empty, and cold memory on every
 * lookup. An empty Fifo owns no heap at all; a drained one gives a large buffer back
 * but keeps a small one, so an address that gets a message or two per loop pass does
 * not pay a malloc and a free for each (KEEP entries, 64-128 bytes, per active address). */
#ifndef ROUTER_FIFO_H
#define ROUTER_FIFO_H

#include <cstddef>
#include <vector>

template <class T>
struct Fifo {
    static constexpr size_t KEEP = 8;
    std::vector<T> v;
    size_t head = 0;

    size_t size() const { return v.size() - head; }
    bool empty() const { return v.size() == head; }
    T &front() { return v[head]; }
    T &back() { return v.back(); }
    T &operator[](size_t i) { return v[head + i]; }
    void push_back(const T &x) { v.push_back(x); }
    void pop_back() {
        v.pop_back();
        if (v.size() == head) drained();
    }
    void pop_front() {
        ++head;
        if (head == v.size()) {
            drained();
        } else if (head >= 1024 && head * 2 >= v.size()) {
            v.erase(v.begin(), v.begin() + head);  /* amortised: keep memory bounded */
            head = 0;
        }
    }
    void erase_at(size_t i) {
        v.erase(v.begin() + head + i);
        if (v.size() == head) drained();
    }
    void drained() {
        if (v.capacity() <= KEEP) {
            v.clear();
            head = 0;
        } else {
            clear();
        }
    }
    void clear() {
        std::vector<T>().swap(v);  /* give the buffer back: idle addresses cost nothing */
        head = 0;
    }
};

#endif
