// Shared definitions for the merge-loop kernels (pair_table.cu, argmax.cu,
// merge.cu, compact.cu). Included by each .cu; loaded through
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
// host reads it back once per batch of merges, never per merge.
#define ST_DONE 0        // merges done so far (the next merge's index)
#define ST_HALT 1        // 0 running, else one of HALT_*; every loop kernel is a no-op while set
#define ST_NOCC 2        // occurrences found by the current merge
#define ST_OCC_START 3   // where the current merge's occurrences start in the position pool
#define ST_POOL_USED 4   // pool entries in use before the current merge's occurrences
#define ST_DEAD 5        // symbols removed since the last compaction (current merge not included)
#define ST_USED 6        // pair-table slots holding a key
#define ST_TOKBYTES 7    // bytes used in the token byte buffer
#define ST_A 8           // left id of the current merge
#define ST_B 9           // right id of the current merge
#define ST_DROPPED 10    // weighted symbols of words dropped by compaction (for the token total)
#define ST_PENDING 11    // token whose position list length is not yet written, or -1
#define ST_ERR 12        // detail for HALT_INTERNAL
#define ST_SIZE 16

#define HALT_NO_PAIR 1   // no pair has a positive count: training stops early
#define HALT_TABLE 2     // the pair table passed its load limit: the host rebuilds it
#define HALT_TOKBUF 3    // the token byte buffer is full: the host grows it
#define HALT_INTERNAL 4  // an invariant broke (a bug): the host raises

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

__device__ __forceinline__ void set_halt(long long* st, long long code) {
    atomicCAS((u64*)&st[ST_HALT], 0ull, (u64)code);
}

// Add w to the count of `key`, inserting the key if absent (open addressing,
// linear probing, keys never removed: a pair that dies keeps its slot with
// count 0 until the host rebuilds the table). Crossing `used_limit` occupied
// slots halts the loop with HALT_TABLE so probe chains stay short; the
// insertion itself still completes.
__device__ void table_add(u64* keys, long long* cnt, int bits, long long used_limit,
                          u64 key, long long w, long long* st) {
    u64 mask = (1ull << bits) - 1ull;
    u64 s = pair_slot(key, bits);
    for (u64 probe = 0; probe <= mask; ++probe) {
        u64 k = keys[s];
        if (k == EMPTY_KEY) {
            u64 prev = atomicCAS(&keys[s], EMPTY_KEY, key);
            if (prev == EMPTY_KEY) {
                long long used = (long long)atomicAdd((u64*)&st[ST_USED], 1ull) + 1;
                if (used > used_limit) set_halt(st, HALT_TABLE);
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
    set_halt(st, HALT_TABLE);  // full table: dropped, the host rebuilds and recounts
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

// True when slot x ranks strictly above slot y (DESIGN §1.4): higher count,
// then the greater (bytes(left), bytes(right)). Two distinct tokens can share
// their bytes; then the greater (left id, right id) wins, so the order is total
// and the argmax does not depend on the reduction order. -1 is "no slot".
__device__ bool slot_above(long long x, long long y, const u64* keys, const long long* cnt,
                           const unsigned char* tb, const long long* toff, const int* tlen) {
    if (x < 0) return false;
    if (y < 0) return true;
    long long cx = cnt[x];
    long long cy = cnt[y];
    if (cx != cy) return cx > cy;
    u64 kx = keys[x];
    u64 ky = keys[y];
    if (kx == ky) return false;
    int r = tok_cmp(tb, toff, tlen, key_left(kx), key_left(ky));
    if (r != 0) return r > 0;
    r = tok_cmp(tb, toff, tlen, key_right(kx), key_right(ky));
    if (r != 0) return r > 0;
    return kx > ky;
}

#endif
