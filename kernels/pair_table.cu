// Pair counting: the full (re)count of adjacent pairs into the pair table.
// Loaded by gpubpe.backends.cuda.kernels.count_pairs.
//
// The pair table is an open-addressing hash table, keys u64 (left << 32 |
// right), counts int64, EMPTY_KEY = all ones, linear probing, capacity a power
// of two (1 << bits). It serves both the full count here and the per-merge
// updates in step.cu (table_add / table_sub in common.cuh).
//
// Why a hash table and not sort-and-reduce. Per merge, the loop must add and
// subtract counts for a handful of pairs chosen by the data, and insert pairs
// that never existed: that needs random access by key. Sort-and-reduce gives a
// sorted key array, but a new pair breaks the order, so every merge would need
// a re-sort (O(P log P) work) or a side table, i.e. a hash table anyway. For
// the full count alone the two are close on paper: sort-and-reduce moves every
// 8-byte key through ~4 radix passes (~8 x 8 bytes of traffic per position)
// plus a reduce; the hash table does one atomicAdd per position, and the
// initial keys are byte pairs (at most 65,536 distinct), so the table is small,
// hot in L2, and atomics on it run near L2 bandwidth. One structure for both
// uses wins; the table is rebuilt (this kernel) when its load passes a limit,
// which also drops the pairs whose count went to 0, so the argmax scan stays
// proportional to the live pairs.
#include "common.cuh"

// count_pairs
//   Geometry: 1-D grid-stride over positions; any grid, blockDim <= MAX_BLOCK.
//   In:  sym[n]  token id per position, -1 for a removed symbol
//        nxt[n]  next live position in the same word, -1 at the word's end
//        wrd[n]  word index per position; counts[W] its weight
//   Out: keys/cnt  every live adjacent pair added with its word's weight
//        st[ST_USED] occupied slots; st[ST_HALT] = HALT_TABLE past used_limit
//   The table must be cleared (keys EMPTY_KEY, cnt 0, st[ST_USED] 0) first.
//   Example: words "aaa" x2 and "ab" x1 -> (a,a): 4, (a,b): 1.
extern "C" __global__ void count_pairs(const int* __restrict__ sym, const int* __restrict__ nxt,
                                       const int* __restrict__ wrd, const long long* __restrict__ counts,
                                       long long n, u64* keys, long long* cnt, int bits,
                                       long long used_limit, long long* st) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
        int s = sym[q];
        int r = nxt[q];
        if (s < 0 || r < 0) continue;
        table_add(keys, cnt, bits, used_limit, pair_key(s, sym[r]), counts[wrd[q]], st, nullptr);
    }
}
