// The merge pass and the incremental count update, four launches per merge.
// Loaded by gpubpe.backends.cuda.kernels.mark_occurrences, remove_old_pairs,
// apply_merges, add_new_pairs.
//
// Layout. Words are CSR spans of positions; inside the spans, the live symbols
// of a word form a doubly linked list (nxt / prv, -1 at the ends) so a merge
// removes a symbol in O(1) without shifting, and parallel merges in one word
// never move each other's data. A removed symbol has sym = -1. compact.cu
// squeezes removed symbols and finished words out now and then.
//
// Finding the occurrences without a full scan. The position pool holds, per
// token x, a list of the positions where x was created (list_start[x],
// list_len[x]); initially the positions of each byte. A merge (a, b) only
// scans list(a), skipping entries whose symbol has since changed, and appends
// the positions it merges to the pool: that is list(t) for the new token t.
// Every merge removes one symbol per occurrence, so the pool never outgrows
// twice the symbol count. A full scan per merge would read every symbol
// (~12 bytes each) 32,000 times; list(a) is usually a small fraction of it.
//
// Exactness (DESIGN §1.3, §1.5). Occurrences are non-overlapping, left to
// right: for a != b every (a, b) is one. For a == b, in a run of equal symbols
// only the even offsets from the run start merge: the run's first position
// walks the run and marks every other pair, so the work is linear in the run.
// Each pair position is then removed once and added once:
//   remove: the occurrence's own pair, its right pair, and its left pair
//           unless the left neighbour is the right half of another occurrence
//           (that occurrence removes it as its right pair);
//   add:    (t, right neighbour) always, (left neighbour, t) unless the left
//           neighbour is itself a new t (it adds that pair as its right pair).
// Separate launches are the barriers between the phases.
#include "common.cuh"

// mark_occurrences
//   Geometry: 1-D grid-stride over list(a); any grid.
//   In:  st[ST_A], st[ST_B], m = st[ST_DONE] - 1; sym, nxt, prv;
//        pool[list_start[a] .. + list_len[a]]
//   Out: mk[q] = m and q appended at pool[st[ST_OCC_START] + k] for every
//        occurrence start q; st[ST_NOCC] = number of occurrences
//   Example: word a a a a a with (a, a): occurrences at offsets 0 and 2.
__device__ void emit_occurrence(int q, long long m, int* mk, int* pool, long long pool_cap, long long* st) {
    mk[q] = (int)m;
    long long k = (long long)atomicAdd((u64*)&st[ST_NOCC], 1ull);
    long long at = st[ST_OCC_START] + k;
    if (at >= pool_cap) {
        st[ST_ERR] = 2;  // the pool bound (one entry per removed symbol) broke
        set_halt(st, HALT_INTERNAL);
        return;
    }
    pool[at] = q;
}

extern "C" __global__ void mark_occurrences(const int* __restrict__ sym, const int* __restrict__ nxt,
                                            const int* __restrict__ prv, int* mk, int* pool,
                                            const long long* __restrict__ list_start,
                                            const long long* __restrict__ list_len, long long pool_cap,
                                            long long* st) {
    if (st[ST_HALT] != 0) return;
    int a = (int)st[ST_A];
    int b = (int)st[ST_B];
    long long m = st[ST_DONE] - 1;
    long long start = list_start[a];
    long long len = list_len[a];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < len; k += stride) {
        int q = pool[start + k];
        if (sym[q] != a) continue;  // merged into a later token since
        if (a != b) {
            int r = nxt[q];
            if (r >= 0 && sym[r] == b) emit_occurrence(q, m, mk, pool, pool_cap, st);
            continue;
        }
        int p = prv[q];
        if (p >= 0 && sym[p] == a) continue;  // not a run start
        int r = q;
        while (true) {
            int n1 = nxt[r];
            if (n1 < 0 || sym[n1] != a) break;
            emit_occurrence(r, m, mk, pool, pool_cap, st);
            int n2 = nxt[n1];
            if (n2 < 0 || sym[n2] != a) break;
            r = n2;
        }
    }
}

// remove_old_pairs
//   Geometry: 1-D grid-stride over the occurrences; any grid.
//   In:  occurrences pool[st[ST_OCC_START] .. + st[ST_NOCC]], mk, sym, nxt, prv, wrd, counts
//   Out: cnt of every pair position the merge destroys, minus the word's weight (once each)
//   Example: x a b a b y with (a, b): (x,a), (a,b), (b,a), (a,b), (b,y) each lose w once.
extern "C" __global__ void remove_old_pairs(const int* __restrict__ sym, const int* __restrict__ nxt,
                                            const int* __restrict__ prv, const int* __restrict__ mk,
                                            const int* __restrict__ wrd, const long long* __restrict__ counts,
                                            const int* __restrict__ pool, const u64* __restrict__ keys,
                                            long long* cnt, int bits, long long* st) {
    if (st[ST_HALT] != 0) return;
    int a = (int)st[ST_A];
    int b = (int)st[ST_B];
    int m = (int)(st[ST_DONE] - 1);
    long long start = st[ST_OCC_START];
    long long nocc = st[ST_NOCC];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < nocc; k += stride) {
        int i = pool[start + k];
        int j = nxt[i];
        long long w = counts[wrd[i]];
        table_sub(keys, cnt, bits, pair_key(a, b), w, st);
        int r = nxt[j];
        if (r >= 0) table_sub(keys, cnt, bits, pair_key(b, sym[r]), w, st);
        int l = prv[i];
        if (l >= 0) {
            int ll = prv[l];
            bool right_half_of_other = ll >= 0 && mk[ll] == m;
            if (!right_half_of_other) table_sub(keys, cnt, bits, pair_key(sym[l], a), w, st);
        }
    }
}

// apply_merges
//   Geometry: 1-D grid-stride over the occurrences; any grid.
//   Out: at each occurrence i (right half j): sym[i] = t, sym[j] = -1, j unlinked.
//   No two occurrences write the same element: i and j belong to one occurrence,
//   and prv[nxt[j]] is written only by the occurrence whose j precedes it.
//   Example: x a b y -> x t . y (the dot is removed, x <-> t <-> y linked).
extern "C" __global__ void apply_merges(int* sym, int* nxt, int* prv, const int* __restrict__ pool,
                                        long long* st) {
    if (st[ST_HALT] != 0) return;
    int t = 256 + (int)(st[ST_DONE] - 1);
    long long start = st[ST_OCC_START];
    long long nocc = st[ST_NOCC];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < nocc; k += stride) {
        int i = pool[start + k];
        int j = nxt[i];
        int r = nxt[j];
        sym[i] = t;
        sym[j] = -1;
        nxt[i] = r;
        if (r >= 0) prv[r] = i;
        nxt[j] = -1;
        prv[j] = -1;
    }
}

// add_new_pairs
//   Geometry: 1-D grid-stride over the occurrences; any grid.
//   Out: cnt of every pair position the merge creates, plus the word's weight
//        (inserting new keys); st[ST_HALT] = HALT_TABLE past used_limit.
//   Example: x t t y (two occurrences) -> (x,t), (t,t), (t,y) each gain w once.
extern "C" __global__ void add_new_pairs(const int* __restrict__ sym, const int* __restrict__ nxt,
                                         const int* __restrict__ prv, const int* __restrict__ mk,
                                         const int* __restrict__ wrd, const long long* __restrict__ counts,
                                         const int* __restrict__ pool, u64* keys, long long* cnt, int bits,
                                         long long used_limit, long long* st) {
    if (st[ST_HALT] != 0) return;
    int m = (int)(st[ST_DONE] - 1);
    int t = 256 + m;
    long long start = st[ST_OCC_START];
    long long nocc = st[ST_NOCC];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x; k < nocc; k += stride) {
        int i = pool[start + k];
        long long w = counts[wrd[i]];
        int r = nxt[i];
        if (r >= 0) table_add(keys, cnt, bits, used_limit, pair_key(t, sym[r]), w, st);
        int l = prv[i];
        if (l >= 0 && mk[l] != m) table_add(keys, cnt, bits, used_limit, pair_key(sym[l], t), w, st);
    }
}
