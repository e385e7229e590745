// Shared definitions for the merge-loop kernels (links.cu, pair_table.cu,
// step.cu, compact.cu). Included by each .cu; loaded through
// gpubpe.backends.cuda.kernels (NVRTC on a device, g++ in the simulator).
//
// Only what both compilers accept is used here: plain C++ integer types,
// global-memory atomics on int / unsigned long long, __syncthreads and
// statically sized __shared__ arrays. No warp intrinsics, no templates in
// kernel signatures, no C++ standard headers (NVRTC has none).
#ifndef GPUBPE_COMMON_CUH
#define GPUBPE_COMMON_CUH

typedef unsigned long long u64;

// The run status: one int64[ST_SIZE] device array every kernel reads. The
// host reads it back once per batch of steps, never per step. Sizes that
// change per step (candidates, occurrences, new pairs) live here, so every
// launch has fixed arguments and one CUDA graph serves the whole run.
#define ST_DONE 0        // merges done so far (the next merge's index)
#define ST_HALT 1        // 0 running, else one of HALT_*; set by the step's selection and decision (step.cu)
#define ST_OCC 2         // occurrences step_find found this step (all selected candidates)
#define ST_LISTS 3       // list entries step_find scans this step (sum over the selected candidates)
#define ST_POOL_USED 4   // position-pool entries in use
#define ST_DEAD 5        // symbols removed since the last compaction
#define ST_USED 6        // pair-table slots holding a key
#define ST_TOKBYTES 7    // bytes used in the token byte buffer
#define ST_NSEL 8        // candidates selected this step (step_select)
#define ST_NACC 9        // candidates accepted this step (the decision): merges done = the first NACC
#define ST_DROPPED 10    // weighted symbols of words dropped by compaction (for the token total)
#define ST_MKBASE 11     // mk[q] == MKBASE + k marks q as an occurrence of selected candidate k
#define ST_ERR 12        // detail for HALT_INTERNAL
#define ST_LIMIT 13      // merges wanted in all: the device stops there (a partial last batch)
#define ST_THRESH 14     // candidate threshold: every live pair with count >= it is in cand
#define ST_NCAND 15      // entries in cand (stale ones, now below the threshold, included)
#define ST_NNEW 16       // pair-table slots inserted this step (newslots)
#define ST_SUSED 17      // scratch-table slots used this step (sused)
#define ST_WANT 18       // how many candidates the next step selects (adapts to the last step)
#define ST_TFULL 19      // 1: the pair table passed its load limit in a step (halts at the next select)
#define ST_CFULL 20      // 1: cand overflowed (halts at the next select: the host refills)
#define ST_SFULL 21      // 1: the scratch table overflowed this step (the step accepts one merge)
#define ST_STEPS 22      // steps done
#define ST_RUNMAX 23     // the most run members one step_find thread walked this step (its serial part)
#define ST_ARRIVED 24    // blocks of the launch in flight done with their grid part (the last one resets it)
#define ST_NLONG 25      // runs step_find handed to its last block this step (may exceed the record capacity)
#define ST_RUNROUNDS 26  // rounds of the last block's run scan this step (its serial part)
#define ST_LONGMAX 27    // the longest run the last block scanned this step
#define ST_SIZE 32

#define HALT_NO_PAIR 1   // no pair has a positive count: training stops early
#define HALT_TABLE 2     // the pair table passed its load limit: the host rebuilds it
#define HALT_TOKBUF 3    // the token byte buffer is full: the host grows it
#define HALT_INTERNAL 4  // an invariant broke (a bug): the host raises
#define HALT_REFILL 5    // no pair at or above the threshold in cand: the host refills it
#define HALT_CAND 6      // cand is full: the host refills (compacts) it
#define HALT_LIMIT 7     // ST_LIMIT merges done
#define HALT_MIN_COUNT 8 // the best pair's count is below min_count (HF's min_frequency): training stops

// The per-step candidate record: sel is int64[SEL_FIELDS * kmax], field f of
// candidate k at sel[f * kmax + k] (one array keeps the kernel signatures short).
#define SEL_SLOT 0       // pair-table slot
#define SEL_CNT 1        // its count at the step's start
#define SEL_KEY 2        // its key (left << 32 | right)
#define SEL_LSTART 3     // where list(left) starts in the pool
#define SEL_PRE 4        // exclusive prefix of the list lengths (step_find's index space)
#define SEL_MAXC 5       // largest count of a pair this merge alone would create
#define SEL_NOCC 6       // its occurrences
#define SEL_FILL 7       // occurrences written to its pool list so far (step_merge)
#define SEL_TOK 8        // the new token's id, for accepted candidates
#define SEL_POOL 9       // where list(new token) starts in the pool, for accepted candidates
#define SEL_FIELDS 10
#define SELECT_UNROLL 8  // candidate-set entries a step_select thread loads per round
#define DECIDE_MAX 256   // the decision stages this many candidates in shared memory (kmax <= it)
#define SELECT_LOCAL 4   // candidates each step_select thread keeps: the block sorts blockDim * 4 (kmax <= that)
#define RUN_UNROLL 4     // slots each thread of the run scan reads per round (step.cu, long runs)
#define LRUN_FIELDS 4    // a long-run record: continuation position, candidate, occurrences so far, left neighbour

#define EMPTY_KEY 0xFFFFFFFFFFFFFFFFull
#define MAX_BLOCK 256    // __shared__ arrays are sized for this; blockDim.x must be a power of 2 <= it

__device__ __forceinline__ u64 pair_key(int left, int right) {
    return ((u64)(unsigned)left << 32) | (u64)(unsigned)right;
}

__device__ __forceinline__ int key_left(u64 key) { return (int)(key >> 32); }
__device__ __forceinline__ int key_right(u64 key) { return (int)(key & 0xFFFFFFFFull); }

// Fibonacci hashing: the top `bits` bits of key * 2^64/phi. Pair keys are
// highly structured (small ids), so the low bits alone would cluster.
__device__ __forceinline__ u64 pair_slot(u64 key, int bits) {
    return (key * 0x9E3779B97F4A7C15ull) >> (64 - bits);
}

// A load that sees what other blocks of the same launch wrote before they
// arrived (the last-block pattern of step.cu): volatile bypasses the L1 cache,
// which is not coherent across SMs. Launch boundaries need none of this.
__device__ __forceinline__ long long fresh(const long long* p) { return *(const volatile long long*)p; }
__device__ __forceinline__ u64 fresh_u64(const u64* p) { return *(const volatile u64*)p; }

__device__ __forceinline__ void set_halt(long long* st, long long code) {
    atomicCAS((u64*)&st[ST_HALT], 0ull, (u64)code);
}

// Add w to the count of `key`, inserting the key if absent (open addressing,
// linear probing, keys never removed: a pair that dies keeps its slot with
// count 0 until the host rebuilds the table). Crossing `used_limit` occupied
// slots halts the loop with HALT_TABLE so probe chains stay short; the
// insertion itself still completes. In a step (newslots != nullptr) the halt
// waits for the next selection (ST_TFULL): the step in flight must still be
// applied, and the host's recount then starts from its result; every inserted
// slot is listed in newslots (a new pair's count is final within its step, so
// step_merge's last block can decide then whether it joins the candidate set).
__device__ void table_add(u64* keys, long long* cnt, int bits, long long used_limit,
                          u64 key, long long w, long long* st, long long* newslots) {
    u64 mask = (1ull << bits) - 1ull;
    u64 s = pair_slot(key, bits);
    for (u64 probe = 0; probe <= mask; ++probe) {
        u64 k = keys[s];
        if (k == EMPTY_KEY) {
            u64 prev = atomicCAS(&keys[s], EMPTY_KEY, key);
            if (prev == EMPTY_KEY) {
                long long used = (long long)atomicAdd((u64*)&st[ST_USED], 1ull) + 1;
                if (used > used_limit) {
                    if (newslots) st[ST_TFULL] = 1;
                    else set_halt(st, HALT_TABLE);
                }
                if (newslots) newslots[atomicAdd((u64*)&st[ST_NNEW], 1ull)] = (long long)s;
                k = key;
            } else {
                k = prev;
            }
        }
        if (k == key) {
            atomicAdd((u64*)&cnt[s], (u64)w);
            return;
        }
        s = (s + 1ull) & mask;
    }
    // full table: dropped, the host rebuilds and recounts
    if (newslots) st[ST_TFULL] = 1;
    else set_halt(st, HALT_TABLE);
}

// The slot holding `key`, or -1 when the table has none (fresh loads: the
// last block of step_merge asks while other blocks' insertions are recent).
__device__ long long table_find(const u64* keys, int bits, u64 key) {
    u64 mask = (1ull << bits) - 1ull;
    u64 s = pair_slot(key, bits);
    for (u64 probe = 0; probe <= mask; ++probe) {
        u64 k = fresh_u64(&keys[s]);
        if (k == key) return (long long)s;
        if (k == EMPTY_KEY) return -1;
        s = (s + 1ull) & mask;
    }
    return -1;
}

// Subtract w from the count of `key`, which must be present.
__device__ void table_sub(const u64* keys, long long* cnt, int bits, u64 key, long long w, long long* st) {
    u64 mask = (1ull << bits) - 1ull;
    u64 s = pair_slot(key, bits);
    for (u64 probe = 0; probe <= mask; ++probe) {
        u64 k = keys[s];
        if (k == key) {
            atomicAdd((u64*)&cnt[s], (u64)(-w));
            return;
        }
        if (k == EMPTY_KEY) break;
        s = (s + 1ull) & mask;
    }
    st[ST_ERR] = 1;  // a pair being removed was never counted
    set_halt(st, HALT_INTERNAL);
}

// Compare the bytes of tokens x and y like Python compares bytes:
// <0, 0 or >0; a proper prefix is smaller.
__device__ int tok_cmp(const unsigned char* tb, const long long* toff, const int* tlen, int x, int y) {
    if (x == y) return 0;
    const unsigned char* px = tb + toff[x];
    const unsigned char* py = tb + toff[y];
    int lx = tlen[x];
    int ly = tlen[y];
    int n = lx < ly ? lx : ly;
    for (int i = 0; i < n; ++i) {
        if (px[i] != py[i]) return (int)px[i] - (int)py[i];
    }
    return lx - ly;
}

// THE pair order (DESIGN §1.4), the one place it is written: true when pair
// x = (count cx, key kx) ranks strictly above pair y. Count first, then the
// greater (bytes(left), bytes(right)). Two distinct tokens can share their
// bytes; then the greater (left id, right id) wins, so the order is total and
// no result depends on a reduction order. An empty entry has count -1 (and
// EMPTY_KEY) and ranks below every pair. The multi-merge step rule holds for
// any strict total order whose first key is the count (gpubpe/backends/steps.py),
// so a tie mode changes only the tie part below.
//
// id_order != 0: the id-order rules (gpubpe/ties.py, ties="hf" / "rustbpe"):
// the smaller (rank(left), rank(right)) ranks above, rank(t) = rank[t] for a
// byte and t for a merge; rank holds 256 entries.
__device__ __forceinline__ long long id_rank(const long long* rank, int t) { return t < 256 ? rank[t] : t; }

__device__ bool pair_ranks_above(long long cx, u64 kx, long long cy, u64 ky, const unsigned char* tb,
                                 const long long* toff, const int* tlen, const long long* rank, int id_order) {
    if (cx != cy) return cx > cy;
    if (kx == ky) return false;
    if (id_order) {
        long long lx = id_rank(rank, key_left(kx)), ly = id_rank(rank, key_left(ky));
        if (lx != ly) return lx < ly;
        return id_rank(rank, key_right(kx)) < id_rank(rank, key_right(ky));
    }
    int r = tok_cmp(tb, toff, tlen, key_left(kx), key_left(ky));
    if (r != 0) return r > 0;
    r = tok_cmp(tb, toff, tlen, key_right(kx), key_right(ky));
    if (r != 0) return r > 0;
    return kx > ky;
}

#endif
