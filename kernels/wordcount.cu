// Exact counting of pre-tokens on the device: a hash table keyed by a 64-bit
// hash of each pre-token's bytes, a stored copy of each word's bytes, and a
// full comparison before any occurrence is counted, so two different words are
// never merged. Loaded by gpubpe.backends.cuda.kernels.wc_insert, wc_verify,
// wc_commit, wc_rehash and wc_extract (driver: gpubpe.pretok.device).
//
// Table (capacity 1 << bits, linear probing from the top bits of key * 2^64/phi):
//   keys[s]   u64    the key (EMPTY_KEY: a free slot); a key is claimed once and
//                    then names that slot for good
//   words[s]  int32  the word stored at s, -1 while none
//   reps[s]   int64  while no word is stored: the smallest occurrence (edge index)
//                    of this chunk that reached s, LLONG_MAX otherwise
//   scount[s] int64  occurrences counted at s
// Words (ids 0..nwords-1, made in order of no importance):
//   wstart / wlen  where word w's bytes lie in arena; wslot its slot; wkey its key
// Counts and elections are merged per block in shared memory first (block_add,
// block_min): one global atomic per distinct slot and block round.
// Status wst int64[WC_SIZE]: WC_USED slots holding a key, WC_NWORDS words,
// WC_ABYTES arena bytes used, WC_NEXT occurrences left for the next round,
// WC_ERR set when an invariant broke.
//
// One chunk is counted in rounds, each three launches; no thread ever waits
// for another thread's write inside a launch (the launch boundary orders them):
//   wc_insert  every occurrence left: key = hash(bytes, round) & hmask; find or
//              claim its slot; where no word is stored yet, elect the smallest
//              occurrence as the slot's representative (atomicMin)
//   wc_verify  compare each occurrence with its slot's stored word, or with the
//              representative's bytes; equal: counted; the representative
//              stores the new word; different (two words, one key): kept for
//              the next round, which hashes with another seed
//   wc_commit  the new words take their slots (words[s] = w)
// A word meets, round after round, the same keys: the first whose slot holds
// it (or elects it) is where it is counted, in every chunk, so it is never
// stored twice. Occurrences still left after config.DEVICE_COUNT_ROUNDS
// rounds are counted on the host (exact; with a full 64-bit hash this needs
// two rounds of colliding pairs and never happens in practice; the tests
// force it with a 2-bit hmask).
#include "common.cuh"

#define WC_USED 0
#define WC_NWORDS 1
#define WC_ABYTES 2
#define WC_NEXT 3
#define WC_ERR 4         // 1: a word found no room reserved (a bug; the host raises)
#define WC_SIZE 8
#define WC_NO_REP 0x7FFFFFFFFFFFFFFFll

// The span of the pre-token at edge k (pos from pretok_spans; pos[k] >= 0).
__device__ __forceinline__ void span_of(const int* pos, long long k, long long* s, long long* e) {
    int x = pos[k + 1];
    *s = pos[k];
    *e = x >= 0 ? x : ~x;
}

// 64-bit hash of d[s:e] for a round: eight bytes per step, multiply and
// xor-shift, then a full avalanche (the top bits pick the slot).
__device__ u64 word_hash(const unsigned char* d, long long s, long long e, int round) {
    u64 h = 0xCBF29CE484222325ull ^ (u64)(e - s) ^ ((u64)(round + 1) * 0xD6E8FEB86659FD93ull);
    for (long long q = s; q < e; q += 8) {
        u64 w = 0;
        long long m = e - q < 8 ? e - q : 8;
        for (long long t = 0; t < m; ++t) w |= (u64)d[q + t] << (8 * t);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    h *= 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

__device__ __forceinline__ bool same_bytes(const unsigned char* a, const unsigned char* b, long long len) {
    for (long long t = 0; t < len; ++t)
        if (a[t] != b[t]) return false;
    return true;
}

// Find or claim the slot of key (the host keeps the table at most half full).
__device__ long long slot_claim(u64* keys, int bits, u64 key, long long* wst) {
    u64 mask = (1ull << bits) - 1ull;
    u64 s = pair_slot(key, bits);
    while (true) {
        u64 k = keys[s];
        if (k == EMPTY_KEY) {
            k = atomicCAS(&keys[s], EMPTY_KEY, key);
            if (k == EMPTY_KEY) {
                atomicAdd((u64*)&wst[WC_USED], 1ull);
                return (long long)s;
            }
        }
        if (k == key) return (long long)s;
        s = (s + 1ull) & mask;
    }
}

// Same-address atomics serialize, and a frequent word (" the": 4% of the
// occurrences) would send every one of its occurrences to one slot. So each
// block first merges its threads' updates in shared memory (a table of
// 2 * blockDim entries keyed by slot: at most blockDim keys, never full), then
// sends one global atomic per distinct slot. Called by every thread of the
// block, once per grid-stride round (slot < 0: nothing to add).
// take_min: each slot's smallest val, lowered into out[slot] with atomicMin
// (the representative election); else the sum of the vals, added to out[slot].
__device__ void block_merge(long long* out, int* s_slot, int* s_val, int slot, int val, bool take_min) {
    int cap = 2 * blockDim.x;
    int none = take_min ? 0x7FFFFFFF : 0;
    for (int j = threadIdx.x; j < cap; j += blockDim.x) { s_slot[j] = -1; s_val[j] = none; }
    __syncthreads();
    if (slot >= 0) {
        int h = (int)(((unsigned)slot * 2654435761u) & (unsigned)(cap - 1));
        while (true) {
            int old = atomicCAS(&s_slot[h], -1, slot);
            if (old == -1 || old == slot) {
                if (take_min) atomicMin(&s_val[h], val);
                else atomicAdd(&s_val[h], val);
                break;
            }
            h = (h + 1) & (cap - 1);
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < cap; j += blockDim.x) {
        if (s_slot[j] < 0) continue;
        if (take_min) atomicMin(&out[s_slot[j]], (long long)s_val[j]);
        else atomicAdd((u64*)&out[s_slot[j]], (u64)s_val[j]);
    }
    __syncthreads();  // every flush read the table before the next round clears it
}

// One occurrence counted at slot (the counts)
__device__ void block_add(long long* scount, int* s_slot, int* s_val, int slot) {
    block_merge(scount, s_slot, s_val, slot, 1, false);
}

// Occurrence k stands for slot's representative: the smallest k wins
__device__ void block_min(long long* reps, int* s_slot, int* s_val, int slot, int k) {
    block_merge(reps, s_slot, s_val, slot, k, true);
}

// wc_insert
//   Geometry: 1-D grid-stride over the occurrences left (all edges in round 0,
//   todo[0..ntodo) after); any grid; blockDim a power of two <= MAX_BLOCK.
//   In:  data, pos[nedges + 1] (pretok_spans); round; hmask (all ones; fewer
//        bits only to force collisions in tests); the table (keys, words, reps)
//   Out: occ_slot[k] the slot of occurrence k; keys claimed; reps[s] lowered
//        to the smallest k of a slot without a word
//   Example: "ab", " ab" and "ab" at edges 0, 1, 2 -> "ab" and " ab" each
//            claim a slot; the slot of "ab" gets rep 0.
extern "C" __global__ void wc_insert(const unsigned char* __restrict__ data, const int* __restrict__ pos,
                                     long long nedges, const int* __restrict__ todo, long long ntodo, int rnd,
                                     long long hmask, u64* keys, const int* __restrict__ words, long long* reps,
                                     int bits, int* occ_slot, long long* wst) {
    __shared__ int s_slot[2 * MAX_BLOCK];
    __shared__ int s_val[2 * MAX_BLOCK];
    long long total = rnd == 0 ? nedges : ntodo;
    long long stride = (long long)gridDim.x * blockDim.x;
    // the loop bound is the same for the whole block: every thread reaches block_min's barriers
    for (long long base = (long long)blockIdx.x * blockDim.x; base < total; base += stride) {
        long long t = base + threadIdx.x;
        long long k = t < total ? (rnd == 0 ? t : todo[t]) : -1;
        int elect = -1;  // the slot whose representative this occurrence stands for
        if (k >= 0 && pos[k] >= 0) {  // pos[k] < 0: a piece end
            long long s, e;
            span_of(pos, k, &s, &e);
            // the bits a weak mask drops name the round, so rounds never share keys
            u64 key = (word_hash(data, s, e, rnd) & (u64)hmask) |
                      ((u64)(rnd + 1) * 0x9E3779B97F4A7C15ull & ~(u64)hmask);
            if (key == EMPTY_KEY) key = EMPTY_KEY - 1ull;
            long long slot = slot_claim(keys, bits, key, wst);
            occ_slot[k] = (int)slot;
            if (words[slot] < 0) elect = (int)slot;
        }
        block_min(reps, s_slot, s_val, elect, (int)k);
    }
}

// wc_verify
//   Geometry: as wc_insert (shared-memory merge of the counts, block_add).
//   In:  as wc_insert, and the words (wstart, wlen, arena); the host made room
//        for every occurrence left to be a new word (wcap words, acap bytes)
//   Out: scount[s] += 1 for each occurrence equal to its slot's word; the
//        representative of a slot without a word stores it (arena, wstart,
//        wlen, wslot, wkey; WC_NWORDS, WC_ABYTES); each other occurrence goes
//        to next[] (WC_NEXT) for the next round
//   Example: keys colliding for "ab" (rep, edge 0) and "cd" (edge 1): "ab" is
//            stored and counted, edge 1 goes to next.
extern "C" __global__ void wc_verify(const unsigned char* __restrict__ data, const int* __restrict__ pos,
                                     long long nedges, const int* __restrict__ todo, long long ntodo, int rnd,
                                     const u64* __restrict__ keys, const int* __restrict__ words,
                                     const long long* __restrict__ reps, long long* scount,
                                     const int* __restrict__ occ_slot, unsigned char* arena, long long acap,
                                     long long* wstart, int* wlen, int* wslot, u64* wkey, long long wcap,
                                     int* next, long long* wst) {
    __shared__ int s_slot[2 * MAX_BLOCK];
    __shared__ int s_val[2 * MAX_BLOCK];
    long long total = rnd == 0 ? nedges : ntodo;
    long long stride = (long long)gridDim.x * blockDim.x;
    // the loop bound is the same for the whole block: every thread reaches block_add's barriers
    for (long long base = (long long)blockIdx.x * blockDim.x; base < total; base += stride) {
        long long t = base + threadIdx.x;
        long long k = t < total ? (rnd == 0 ? t : todo[t]) : -1;
        int counted = -1;  // the slot this occurrence is counted at
        if (k >= 0 && pos[k] >= 0) {
            long long s, e;
            span_of(pos, k, &s, &e);
            long long len = e - s;
            int slot = occ_slot[k];
            int w = words[slot];
            bool equal = false;
            if (w >= 0) {
                equal = wlen[w] == len && same_bytes(arena + wstart[w], data + s, len);
            } else if (reps[slot] == k) {
                long long id = (long long)atomicAdd((u64*)&wst[WC_NWORDS], 1ull);
                long long at = (long long)atomicAdd((u64*)&wst[WC_ABYTES], (u64)len);
                if (id < wcap && at + len <= acap) {
                    for (long long q = 0; q < len; ++q) arena[at + q] = data[s + q];
                    wstart[id] = at;
                    wlen[id] = (int)len;
                    wslot[id] = slot;
                    wkey[id] = keys[slot];
                    equal = true;
                } else {
                    wst[WC_ERR] = 1;  // the host reserved room: a bug, reported
                }
            } else {
                long long rs, re;
                span_of(pos, reps[slot], &rs, &re);
                equal = re - rs == len && same_bytes(data + rs, data + s, len);
            }
            if (equal) counted = slot;
            else if (!wst[WC_ERR]) next[atomicAdd((u64*)&wst[WC_NEXT], 1ull)] = (int)k;
        }
        block_add(scount, s_slot, s_val, counted);
    }
}

// wc_commit
//   Geometry: 1-D grid-stride over the words made this round, ids first..last-1.
//   Out: words[wslot[w]] = w; reps[wslot[w]] = WC_NO_REP
//   Example: word 5 stored at slot 9 -> words[9] = 5.
extern "C" __global__ void wc_commit(long long first, long long last, const int* __restrict__ wslot, int* words,
                                     long long* reps) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long w = first + (long long)blockIdx.x * blockDim.x + threadIdx.x; w < last; w += stride) {
        int s = wslot[w];
        words[s] = (int)w;
        reps[s] = WC_NO_REP;
    }
}

// wc_rehash
//   Geometry: 1-D grid-stride over the words; any grid.
//   In:  wkey, wslot (slots in the old table), scount (old); a new table
//        (new_keys EMPTY_KEY, new_words -1, new_scount 0) of 1 << new_bits slots
//   Out: each word in the new table with its count; wslot updated; wst[WC_USED]
//        must be set to 0 before (it counts the slots claimed)
//   Example: words at old slots {3, 7} -> the slots of their keys in the new table.
extern "C" __global__ void wc_rehash(long long nwords, const u64* __restrict__ wkey, int* wslot,
                                     const long long* __restrict__ scount, u64* new_keys, int* new_words,
                                     long long* new_scount, int new_bits, long long* wst) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < nwords; w += stride) {
        long long s = slot_claim(new_keys, new_bits, wkey[w], wst);
        new_words[s] = (int)w;
        new_scount[s] = scount[wslot[w]];
        wslot[w] = (int)s;
    }
}

// wc_extract
//   Geometry: 1-D grid-stride over the words; any grid.
//   In:  arena, wstart, wlen, wslot, scount; off[nwords + 1] = the exclusive
//        prefix sum of wlen
//   Out: the WordTable's arrays: symbols[off[w]..off[w+1]) = word w's bytes
//        (uint8: the merge loop's upload form), counts[w] = scount[wslot[w]]
//   Example: words "ab" (x2), "c" (x1) -> symbols "abc", off {0, 2, 3}, counts {2, 1}.
extern "C" __global__ void wc_extract(long long nwords, const unsigned char* __restrict__ arena,
                                      const long long* __restrict__ wstart, const int* __restrict__ wlen,
                                      const int* __restrict__ wslot, const long long* __restrict__ scount,
                                      const long long* __restrict__ off, unsigned char* symbols,
                                      long long* counts) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long w = (long long)blockIdx.x * blockDim.x + threadIdx.x; w < nwords; w += stride) {
        long long a = wstart[w], o = off[w];
        for (int q = 0; q < wlen[w]; ++q) symbols[o + q] = arena[a + q];
        counts[w] = scount[wslot[w]];
    }
}
