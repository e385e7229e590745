// One exact multi-merge step (DESIGN §1.4 "Steps"; the rule in plain Python:
// gpubpe/backends/steps.py). Loaded by gpubpe.backends.cuda.kernels.step_select,
// step_find, step_decide, step_update, step_apply. Five launches per step, all
// sized from st on the device, so a CUDA graph of a batch of steps serves the
// whole run; the host reads st once per batch.
//
//   step_select  (1 block)  the best candidates of the candidate set, in rank order
//   step_find    (grid)     their occurrences and, per candidate, the largest
//                           count of a pair it alone would create
//   step_decide  (1 block)  accept the leading candidates the rule allows; commit
//                           their merges, tokens and token bytes
//   step_update  (grid)     every accepted occurrence: pair counts down and up,
//                           read from the pre-step state
//   step_apply   (grid)     rewrite the symbols; new pairs at or above the
//                           threshold join the candidate set; scratch cleared
//
// Layout. Words are CSR spans of positions; inside the spans, the live symbols
// of a word form a doubly linked list (nxt / prv, -1 at the ends), so merges
// remove symbols in O(1) and parallel merges never move each other's data. A
// removed symbol has sym = -1 (compact.cu squeezes them out now and then).
// The position pool holds per token x the positions where x was created
// (list_start[x], list_len[x]; initially the positions of each byte): a merge
// (a, b) scans only list(a), skipping entries whose symbol has changed since.
//
// The candidate set (cand, ST_NCAND, ST_THRESH) holds the slot of every live
// pair whose count is >= the threshold, and maybe stale slots below it. It is
// the CPU heap's invariant (gpubpe/backends/cpu.py): an old pair only loses
// count, and a new pair gets its whole count in the step that creates it, so
// appending the new pairs at or above the threshold after that step keeps it.
// While any entry is at or above the threshold, the best of cand is the best
// pair of the table; when none is, step_select halts with HALT_REFILL and the
// host rescans the table with a lower threshold (about 25 times in a run).
//
// Occurrences. Inside a word, left to right and non-overlapping: for a != b
// every (a, b) position is one; for a == b, in a run of equal symbols only
// the even offsets from the run start merge, found by the run start walking
// the run (a run of length L costs L dependent steps: see the note on runs
// in gpubpe/backends/cuda/__init__.py). Accepted merges are token-disjoint,
// so their occurrences are disjoint and merging them together equals merging
// them one after the other.
//
// The neighbour rules, generalised to "any merge of this step". Occurrence
// (i, j) of accepted merge k -> t_k, l = prv[i], r = nxt[j], weight w:
//   remove  (a_k, b_k) at i, always;
//           (b_k, sym[r]) at j, when r exists (the pair to the right is this
//           occurrence's, whatever r is);
//           (sym[l], a_k) at l, unless l is the right half of an accepted
//           occurrence of any merge of the step (that one removes it as its
//           right pair);
//   add     (t_k, new(r)), when r exists, where new(r) is t_k' when r starts
//           an accepted occurrence of merge k' (k' = k included), else sym[r];
//           (sym[l], t_k), unless l is the right half of an accepted
//           occurrence (that one adds (t_k', t_k) as its right pair).
//   Example: x a b c d y with (a,b) -> t and (c,d) -> u in one step:
//     (a,b) removes (a,b), (b,c), (x,a); adds (t,u), (x,t);
//     (c,d) removes (c,d), (d,y) and not (b,c) (b is the right half of (a,b));
//           adds (u,y) and not (t,u): x t u y, each pair once.
// Every pair position that touches an occurrence is removed exactly once,
// every pair of the new words that holds a new token is added exactly once.
// The reads are of the pre-step state and the writes (step_apply) come one
// launch later: the launch boundary is the barrier.
#include "common.cuh"

#define SELF_TOKEN 0x7FFFFFFF  // in a scratch key: "the merge's own new token" ((t, t) pairs)

__device__ __forceinline__ long long sel_get(const long long* sel, int kmax, int f, long long k) {
    return sel[(long long)f * kmax + k];
}
__device__ __forceinline__ void sel_put(long long* sel, int kmax, int f, long long k, long long v) {
    sel[(long long)f * kmax + k] = v;
}

// step_select's record of selected candidate k, whose left token's list
// starts at lstart and comes after `pre` list entries of the candidates before it
__device__ __forceinline__ void sel_begin(long long* sel, int kmax, long long k, long long lstart, long long pre) {
    sel_put(sel, kmax, SEL_LSTART, k, lstart);
    sel_put(sel, kmax, SEL_PRE, k, pre);
    sel_put(sel, kmax, SEL_MAXC, k, 0);
    sel_put(sel, kmax, SEL_NOCC, k, 0);
    sel_put(sel, kmax, SEL_FILL, k, 0);
}

// step_select's status for a new step of nsel candidates whose lists hold
// `lists` entries: the last step's marks fall below the base, counters reset
__device__ __forceinline__ void step_begin(long long* st, long long nsel, long long lists) {
    st[ST_MKBASE] += st[ST_NSEL];
    st[ST_NSEL] = nsel;
    st[ST_NACC] = 0;
    st[ST_LISTS] = lists;
    st[ST_OCC] = 0;
    st[ST_NNEW] = 0;
    st[ST_SUSED] = 0;
    st[ST_SFULL] = 0;
    st[ST_RUNMAX] = 0;
}

// step_select
//   Geometry: exactly one block; blockDim a power of two <= MAX_BLOCK.
//   In:  cand[st[ST_NCAND]] slots; keys/cnt (bits: the table's size);
//        tb/toff/tlen, or rank[256] when id_order (the tie rule, common.cuh);
//        forced[2 * nforced]: merges replayed first, one a step, whatever
//        their counts (a parent model's; found with table_find, or absent);
//        max_len (0: no cap; else a pair whose token would be longer is never
//        selected); list_start/list_len; st (DONE, LIMIT, THRESH, WANT, the
//        deferred flags)
//   Out: sel[SLOT, CNT, KEY, LSTART, PRE] for k < st[ST_NSEL]: the best
//        candidates at or above the threshold in rank order, as many as the
//        block can prove to be the true prefix of the ranking (below), at
//        most min(kmax, st[ST_WANT]); sel[MAXC, NOCC, FILL] = 0;
//        st: MKBASE advanced past the last step's marks, the per-step
//        counters reset, ST_LISTS = the list entries step_find will scan.
//   Halts: HALT_TABLE / HALT_CAND (deferred flags of the last step),
//        HALT_LIMIT (all merges done), HALT_REFILL (nothing at or above the
//        threshold).
//   Why the prefix is exact: each thread keeps its SELECT_LOCAL best entries;
//   the block sorts the union. Every entry ranking above the best entry any
//   thread had to drop is in the union, so the sorted union is the true
//   ranking down to there.
//   Example: thresh 5, cand counts {9, 7, 3, 7}, the 7s tied to (b,c) > (a,b)
//            -> sel = 9, 7 (b,c), 7 (a,b); the 3 is stale (below the threshold).
extern "C" __global__ void step_select(const u64* __restrict__ keys, const long long* __restrict__ cnt, int bits,
                                       const unsigned char* __restrict__ tb, const long long* __restrict__ toff,
                                       const int* __restrict__ tlen, const long long* __restrict__ rank, int id_order,
                                       const int* __restrict__ forced, long long nforced,
                                       int max_len, const long long* __restrict__ cand,
                                       const long long* __restrict__ list_start,
                                       const long long* __restrict__ list_len, long long* sel, int kmax,
                                       long long* st) {
    __shared__ long long s_cnt[MAX_BLOCK * SELECT_LOCAL];
    __shared__ u64 s_key[MAX_BLOCK * SELECT_LOCAL];
    __shared__ long long s_slot[MAX_BLOCK * SELECT_LOCAL];
    __shared__ long long s_go;
    unsigned tid = threadIdx.x;
    if (st[ST_HALT] != 0) return;
    __syncthreads();  // every thread has read st[ST_HALT] before thread 0 may write it: the return is uniform
    if (tid == 0) {
        long long halt = 0;
        if (st[ST_TFULL]) halt = HALT_TABLE;
        else if (st[ST_CFULL]) halt = HALT_CAND;
        else if (st[ST_DONE] >= st[ST_LIMIT]) halt = HALT_LIMIT;
        s_go = halt == 0;
        if (halt) st[ST_HALT] = halt;
    }
    __syncthreads();
    if (!s_go) return;
    if (st[ST_DONE] < nforced) {
        // a parent model's merge, replayed: a step of exactly it, whatever
        // its count (absent from this table: it only makes its token)
        if (tid == 0) {
            long long m = st[ST_DONE];
            int a = forced[2 * m], b = forced[2 * m + 1];
            u64 key = pair_key(a, b);
            long long slot = table_find(keys, bits, key);
            sel_put(sel, kmax, SEL_SLOT, 0, slot);
            sel_put(sel, kmax, SEL_CNT, 0, slot >= 0 ? cnt[slot] : 0);
            sel_put(sel, kmax, SEL_KEY, 0, (long long)key);
            sel_begin(sel, kmax, 0, list_start[a], 0);
            step_begin(st, 1, list_len[a]);
        }
        return;
    }
    long long thresh = st[ST_THRESH];
    long long ncand = st[ST_NCAND];
    // each thread: its SELECT_LOCAL best eligible entries, sorted, and the best one it dropped
    long long lc[SELECT_LOCAL];
    u64 lk[SELECT_LOCAL];
    long long ls[SELECT_LOCAL];
    for (int i = 0; i < SELECT_LOCAL; ++i) {
        lc[i] = -1;
        lk[i] = EMPTY_KEY;
        ls[i] = -1;
    }
    long long dc = -1;  // the best dropped entry (count, key)
    u64 dk = EMPTY_KEY;
    // SELECT_UNROLL entries per round: their loads are independent, so a round
    // costs two dependent round trips (cand, then cnt and keys), not 2 * SELECT_UNROLL
    for (long long e0 = tid; e0 < ncand; e0 += (long long)blockDim.x * SELECT_UNROLL) {
        long long rs[SELECT_UNROLL], rc[SELECT_UNROLL];
        u64 rk[SELECT_UNROLL];
        for (int u = 0; u < SELECT_UNROLL; ++u) {
            long long e = e0 + (long long)u * blockDim.x;
            rs[u] = e < ncand ? cand[e] : -1;
        }
        for (int u = 0; u < SELECT_UNROLL; ++u) {
            rc[u] = rs[u] >= 0 ? cnt[rs[u]] : -1;
            rk[u] = rs[u] >= 0 ? keys[rs[u]] : EMPTY_KEY;
        }
        for (int u = 0; u < SELECT_UNROLL; ++u) {
            long long s = rs[u], c = rc[u];
            u64 k = rk[u];
            if (s < 0 || c < thresh || c <= 0) continue;  // stale: below the threshold now
            if (max_len > 0 && tlen[key_left(k)] + tlen[key_right(k)] > max_len) continue;
            if (!pair_ranks_above(c, k, lc[SELECT_LOCAL - 1], lk[SELECT_LOCAL - 1], tb, toff, tlen, rank, id_order)) {
                if (pair_ranks_above(c, k, dc, dk, tb, toff, tlen, rank, id_order)) {
                    dc = c;
                    dk = k;
                }
                continue;
            }
            if (lc[SELECT_LOCAL - 1] >= 0 && pair_ranks_above(lc[SELECT_LOCAL - 1], lk[SELECT_LOCAL - 1], dc, dk,
                                                              tb, toff, tlen, rank, id_order)) {
                dc = lc[SELECT_LOCAL - 1];
                dk = lk[SELECT_LOCAL - 1];
            }
            int i = SELECT_LOCAL - 1;
            while (i > 0 && pair_ranks_above(c, k, lc[i - 1], lk[i - 1], tb, toff, tlen, rank, id_order)) {
                lc[i] = lc[i - 1];
                lk[i] = lk[i - 1];
                ls[i] = ls[i - 1];
                --i;
            }
            lc[i] = c;
            lk[i] = k;
            ls[i] = s;
        }
    }
    unsigned nloc = blockDim.x * SELECT_LOCAL;
    for (int i = 0; i < SELECT_LOCAL; ++i) {
        s_cnt[tid * SELECT_LOCAL + i] = lc[i];
        s_key[tid * SELECT_LOCAL + i] = lk[i];
        s_slot[tid * SELECT_LOCAL + i] = ls[i];
    }
    __syncthreads();
    // bitonic sort of the nloc entries, best first
    for (unsigned size = 2; size <= nloc; size <<= 1) {
        for (unsigned stride = size / 2; stride > 0; stride >>= 1) {
            for (unsigned p = tid; p < nloc / 2; p += blockDim.x) {
                unsigned lo = 2 * stride * (p / stride) + (p % stride);
                unsigned hi = lo + stride;
                bool best_first = (lo & size) == 0;
                bool swap = best_first ? pair_ranks_above(s_cnt[hi], s_key[hi], s_cnt[lo], s_key[lo], tb, toff, tlen, rank, id_order)
                                       : pair_ranks_above(s_cnt[lo], s_key[lo], s_cnt[hi], s_key[hi], tb, toff, tlen, rank, id_order);
                if (swap) {
                    long long c = s_cnt[lo]; s_cnt[lo] = s_cnt[hi]; s_cnt[hi] = c;
                    u64 k = s_key[lo]; s_key[lo] = s_key[hi]; s_key[hi] = k;
                    long long s = s_slot[lo]; s_slot[lo] = s_slot[hi]; s_slot[hi] = s;
                }
            }
            __syncthreads();
        }
    }
    // thread 0 copies the sorted entries out; then the block reduces the
    // threads' best dropped entries in the same shared arrays
    if (tid == 0) {
        long long want = st[ST_WANT];
        long long lim = want < kmax ? want : kmax;
        long long n = 0;
        for (unsigned e = 0; e < nloc && n < lim && s_cnt[e] >= 0; ++e, ++n) {
            sel_put(sel, kmax, SEL_SLOT, n, s_slot[e]);
            sel_put(sel, kmax, SEL_CNT, n, s_cnt[e]);
            sel_put(sel, kmax, SEL_KEY, n, (long long)s_key[e]);
        }
        s_go = n;
    }
    __syncthreads();
    long long n = s_go;
    s_cnt[tid] = dc;
    s_key[tid] = dk;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half && pair_ranks_above(s_cnt[tid + half], s_key[tid + half], s_cnt[tid], s_key[tid], tb, toff,
                                           tlen, rank, id_order)) {
            s_cnt[tid] = s_cnt[tid + half];
            s_key[tid] = s_key[tid + half];
        }
        __syncthreads();
    }
    if (tid == 0) {
        long long bc = s_cnt[0];
        u64 bk = s_key[0];
        long long k = 0, pre = 0;
        // keep the entries that rank strictly above the best dropped one
        for (; k < n; ++k) {
            long long c = sel_get(sel, kmax, SEL_CNT, k);
            u64 key = (u64)sel_get(sel, kmax, SEL_KEY, k);
            if (!pair_ranks_above(c, key, bc, bk, tb, toff, tlen, rank, id_order)) break;
            int a = key_left(key);
            sel_begin(sel, kmax, k, list_start[a], pre);
            pre += list_len[a];
        }
        step_begin(st, k, pre);
        if (k == 0) st[ST_HALT] = HALT_REFILL;
    }
}

// scratch_add: count w for created pair `key` of candidate k in the scratch
// table (open addressing; its used slots are listed in sused so step_apply
// clears only those), and raise sel[MAXC][k] to the new count. Counts only
// grow within a step, so the largest value seen by any add is the largest
// final count. Past `slimit` used slots nothing more is inserted and ST_SFULL
// makes the step accept one merge only (always exact: the first candidate is
// the next merge whatever the others create).
__device__ void scratch_add(u64* skeys, long long* scnt, int sbits, long long* sused, long long slimit, u64 key,
                            long long w, long long* sel, int kmax, int k, long long* st) {
    u64 mask = (1ull << sbits) - 1ull;
    u64 s = pair_slot(key, sbits);
    for (u64 probe = 0; probe <= mask; ++probe) {
        u64 cur = skeys[s];
        if (cur == EMPTY_KEY) {
            long long at = (long long)atomicAdd((u64*)&st[ST_SUSED], 1ull);
            if (at >= slimit) {
                st[ST_SFULL] = 1;
                return;
            }
            u64 prev = atomicCAS(&skeys[s], EMPTY_KEY, key);
            sused[at] = prev == EMPTY_KEY ? (long long)s : -1;  // -1: lost the race, nothing to clear
            cur = prev == EMPTY_KEY ? key : prev;
        }
        if (cur == key) {
            long long now = (long long)atomicAdd((u64*)&scnt[s], (u64)w) + w;
            long long* m = &sel[(long long)SEL_MAXC * kmax + k];
            if (now > *m) atomicMax(m, now);  // the plain read filters most of the atomics
            return;
        }
        s = (s + 1ull) & mask;
    }
    st[ST_SFULL] = 1;
}

__device__ __forceinline__ u64 created_key(int k, int side, int x) {
    return ((u64)(unsigned)k << 32) | ((u64)(unsigned)side << 31) | (u64)(unsigned)x;
}

__device__ void emit_occurrence(int q, long long mark, int* mk, int* occ, long long occ_cap, long long* sel,
                                int kmax, int k, long long* st) {
    mk[q] = (int)mark;
    atomicAdd((u64*)&sel[(long long)SEL_NOCC * kmax + k], 1ull);
    long long at = (long long)atomicAdd((u64*)&st[ST_OCC], 1ull);
    if (at >= occ_cap) {  // each position starts at most one selected pair: cannot happen
        st[ST_ERR] = 2;
        set_halt(st, HALT_INTERNAL);
        return;
    }
    occ[at] = q;
}

// step_find
//   Geometry: 1-D grid-stride over the st[ST_LISTS] list entries of the
//   selected candidates; any grid.
//   In:  sel (SLOT..PRE), sym/nxt/prv/wrd/counts, pool (the lists), st
//   Out: for each occurrence q of selected candidate k, as if k were merged
//        alone: mk[q] = st[ST_MKBASE] + k, q appended to occ[st[ST_OCC]++],
//        sel[NOCC][k] += 1; the pairs this merge alone would create counted in
//        the scratch table under (k, side, other token) and sel[MAXC][k] their
//        largest count.
//   Created pairs alone, occurrence (i, j) of (a, b), l = prv[i], r = nxt[j]:
//     (t, t) if r starts another occurrence, else (t, sym[r]);
//     (sym[l], t) unless l is the right half of another occurrence.
//     For a != b, "r starts one" is sym[r] == a, sym[nxt[r]] == b, and "l is a
//     right half" is sym[l] == b, sym[prv[l]] == a. For a == b the run start
//     walks its run of length L: floor(L/2) occurrences, (x, t) once, (t, t)
//     floor(L/2) - 1 times, then (t, y) if L is even, else (t, a).
//   Example: x a a a a a y, (a, a) alone -> x t t a y: occurrences at offsets
//            1 and 3; created (x, t), (t, t), (t, a); (a, y) is not new.
extern "C" __global__ void step_find(const int* __restrict__ sym, const int* __restrict__ nxt,
                                     const int* __restrict__ prv, const int* __restrict__ wrd,
                                     const long long* __restrict__ counts, int* mk, const int* __restrict__ pool,
                                     int* occ, long long occ_cap, long long* sel, int kmax, u64* skeys,
                                     long long* scnt, int sbits, long long* sused, long long slimit, long long* st) {
    if (st[ST_HALT] != 0) return;
    long long nsel = st[ST_NSEL];
    long long total = st[ST_LISTS];
    long long base = st[ST_MKBASE];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < total; g += stride) {
        long long lo = 0, hi = nsel;  // the candidate whose list holds entry g
        while (hi - lo > 1) {
            long long mid = (lo + hi) / 2;
            if (sel_get(sel, kmax, SEL_PRE, mid) <= g) lo = mid;
            else hi = mid;
        }
        int k = (int)lo;
        u64 key = (u64)sel_get(sel, kmax, SEL_KEY, k);
        int a = key_left(key), b = key_right(key);
        int q = pool[sel_get(sel, kmax, SEL_LSTART, k) + (g - sel_get(sel, kmax, SEL_PRE, k))];
        if (sym[q] != a) continue;  // merged into a later token since
        long long w = counts[wrd[q]];
        if (a != b) {
            int j = nxt[q];
            if (j < 0 || sym[j] != b) continue;
            emit_occurrence(q, base + k, mk, occ, occ_cap, sel, kmax, k, st);
            int r = nxt[j];
            if (r >= 0) {
                int rr = nxt[r];
                bool self = sym[r] == a && rr >= 0 && sym[rr] == b;
                scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, self ? SELF_TOKEN : sym[r]), w, sel,
                            kmax, k, st);
            }
            int l = prv[q];
            if (l >= 0) {
                int ll = prv[l];
                bool right_half = sym[l] == b && ll >= 0 && sym[ll] == a;
                if (!right_half)
                    scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 0, sym[l]), w, sel, kmax, k, st);
            }
            continue;
        }
        int l = prv[q];
        if (l >= 0 && sym[l] == a) continue;  // not a run start
        long long runs = 0;
        int r = q, after = -1;
        bool odd = false;
        while (true) {
            int n1 = nxt[r];
            if (n1 < 0 || sym[n1] != a) {  // r ends the run with one a left over
                odd = true;
                after = n1;
                break;
            }
            emit_occurrence(r, base + k, mk, occ, occ_cap, sel, kmax, k, st);
            ++runs;
            int n2 = nxt[n1];
            if (n2 < 0 || sym[n2] != a) {
                after = n2;
                break;
            }
            r = n2;
        }
        if (runs == 0) continue;
        if (runs > st[ST_RUNMAX]) atomicMax(&st[ST_RUNMAX], runs);  // for the cost model: the serial walk
        if (l >= 0) scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 0, sym[l]), w, sel, kmax, k, st);
        if (runs > 1)
            scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, SELF_TOKEN), w * (runs - 1), sel, kmax,
                        k, st);
        if (odd) scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, a), w, sel, kmax, k, st);
        else if (after >= 0)
            scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, sym[after]), w, sel, kmax, k, st);
    }
}

// step_decide
//   Geometry: exactly one block; blockDim a power of two <= MAX_BLOCK.
//   In:  sel (after step_find), tb/toff/tlen, tb_cap, st; min_count (0, or
//        HF's min_frequency), nforced (the replayed merges: never cut by it)
//   Out: st[ST_NACC] = the accepted candidates 0 .. NACC-1 (the rule of
//        gpubpe/backends/steps.py: the first always; then each while its count
//        is > the largest sel[MAXC] of those before it and it shares no token
//        with them; never past ST_LIMIT merges or the token buffer); for each:
//        merges[2m], merges[2m+1] = the pair (m = DONE + its index), mcount[m]
//        its count, token
//        t = 256 + m with bytes(left) + bytes(right) in tb/toff/tlen,
//        sel[TOK] = t, list_start[t] / list_len[t] = where its occurrences go
//        in the pool and how many; st DONE, POOL_USED, DEAD, TOKBYTES, STEPS,
//        WANT (the next step selects 2 * NACC + 2 candidates).
//   Halts: HALT_TOKBUF when not even the first merge's bytes fit (nothing changes);
//        HALT_MIN_COUNT when the first candidate's count is below min_count (a
//        later one below it ends the step: counts only fall, so it ends the run).
//   Example: sel (e,r) 90 maxc 40, (t,h) 80 maxc 50, (e,s) 70 -> 2 accepted:
//            (e,s) shares e with (e,r).
extern "C" __global__ void step_decide(unsigned char* tb, long long* toff, int* tlen, long long tb_cap, int* merges,
                                       long long* mcount, long long min_count, long long nforced,
                                       long long* list_start, long long* list_len, long long* sel, int kmax,
                                       long long* st) {
    // the candidates' records staged in shared memory by the whole block (one
    // round of independent loads), so the serial walk of thread 0 reads no
    // global memory; the bytes are then copied one byte per thread
    __shared__ long long s_cnt[DECIDE_MAX], s_maxc[DECIDE_MAX], s_nocc[DECIDE_MAX], s_oa[DECIDE_MAX],
        s_ob[DECIDE_MAX], s_boff[DECIDE_MAX + 1], s_ot[DECIDE_MAX];
    __shared__ u64 s_key[DECIDE_MAX];
    __shared__ int s_la[DECIDE_MAX], s_lb[DECIDE_MAX];
    __shared__ long long s_nacc;
    unsigned tid = threadIdx.x;
    if (st[ST_HALT] != 0) return;
    long long nsel = st[ST_NSEL];
    __syncthreads();  // every thread has read st before thread 0 may write it: the return is uniform
    for (long long k = tid; k < nsel; k += blockDim.x) {
        u64 key = (u64)sel_get(sel, kmax, SEL_KEY, k);
        int a = key_left(key), b = key_right(key);
        s_key[k] = key;
        s_cnt[k] = sel_get(sel, kmax, SEL_CNT, k);
        s_maxc[k] = sel_get(sel, kmax, SEL_MAXC, k);
        s_nocc[k] = sel_get(sel, kmax, SEL_NOCC, k);
        s_la[k] = tlen[a];
        s_lb[k] = tlen[b];
        s_oa[k] = toff[a];
        s_ob[k] = toff[b];
    }
    __syncthreads();
    if (tid == 0) {
        long long done = st[ST_DONE];
        long long limit = st[ST_LIMIT];
        long long o = st[ST_TOKBYTES];
        long long pool = st[ST_POOL_USED];
        bool one = st[ST_SFULL] != 0;
        long long bound = 0, removed = 0, n = 0, bytes = 0;
        bool low = false;  // the next merge's count is below min_count
        for (long long k = 0; k < nsel && done + n < limit; ++k) {
            int a = key_left(s_key[k]), b = key_right(s_key[k]);
            if (done + n >= nforced && s_cnt[k] < min_count) {
                low = n == 0;  // a later candidate only ends the step: the rule already stopped it
                break;
            }
            if (n > 0) {
                if (one || s_cnt[k] <= bound) break;
                bool shared = false;
                for (long long j = 0; j < n && !shared; ++j) {
                    int aj = key_left(s_key[j]), bj = key_right(s_key[j]);
                    shared = a == aj || a == bj || b == aj || b == bj;
                }
                if (shared) break;
            }
            int len = s_la[k] + s_lb[k];
            if (o + len > tb_cap) break;
            int t = 256 + (int)(done + n);
            s_ot[k] = o;
            s_boff[k] = bytes;
            bytes += len;
            toff[t] = o;
            tlen[t] = len;
            o += len;
            merges[2 * (done + n)] = a;
            merges[2 * (done + n) + 1] = b;
            mcount[done + n] = s_cnt[k];
            sel_put(sel, kmax, SEL_TOK, k, t);
            sel_put(sel, kmax, SEL_POOL, k, pool);
            list_start[t] = pool;
            list_len[t] = s_nocc[k];
            pool += s_nocc[k];
            removed += s_nocc[k];
            if (s_maxc[k] > bound) bound = s_maxc[k];
            ++n;
        }
        s_boff[n] = bytes;
        s_nacc = n;
        if (n == 0) {
            st[ST_HALT] = low ? HALT_MIN_COUNT : HALT_TOKBUF;
        } else {
            st[ST_NACC] = n;
            st[ST_DONE] = done + n;
            st[ST_POOL_USED] = pool;
            st[ST_DEAD] += removed;
            st[ST_TOKBYTES] = o;
            st[ST_STEPS] += 1;
            st[ST_WANT] = 2 * n + 2;
        }
    }
    __syncthreads();
    long long n = s_nacc;
    // the new tokens' bytes: byte g of the step belongs to the merge whose range holds it
    for (long long g = tid; g < s_boff[n]; g += blockDim.x) {
        long long lo = 0, hi = n;
        while (hi - lo > 1) {
            long long mid = (lo + hi) / 2;
            if (s_boff[mid] <= g) lo = mid;
            else hi = mid;
        }
        long long i = g - s_boff[lo];
        tb[s_ot[lo] + i] = i < s_la[lo] ? tb[s_oa[lo] + i] : tb[s_ob[lo] + (i - s_la[lo])];
    }
}

// The accepted candidate whose occurrence starts at p, or -1.
__device__ __forceinline__ int accepted_at(const int* mk, int p, long long base, long long nacc) {
    long long m = (long long)mk[p] - base;
    return m >= 0 && m < nacc ? (int)m : -1;
}

// step_update
//   Geometry: 1-D grid-stride over the st[ST_OCC] occurrences; any grid.
//   In:  occ, mk, sel (KEY, TOK), the pre-step sym/nxt/prv/wrd/counts, st
//   Out: the pair counts of the neighbour rules above (cnt, keys; new keys'
//        slots listed in newslots); each accepted occurrence i appended to
//        list(t) in the pool. Occurrences of candidates not accepted are skipped.
//   Example: x a b c d y, (a,b) -> t and (c,d) -> u: (a,b), (b,c), (x,a),
//            (c,d), (d,y) each lose w; (x,t), (t,u), (u,y) each gain w.
extern "C" __global__ void step_update(const int* __restrict__ sym, const int* __restrict__ nxt,
                                       const int* __restrict__ prv, const int* __restrict__ mk,
                                       const int* __restrict__ wrd, const long long* __restrict__ counts,
                                       const int* __restrict__ occ, int* pool, long long* sel, int kmax, u64* keys,
                                       long long* cnt, int bits, long long used_limit, long long* newslots,
                                       long long* st) {
    if (st[ST_HALT] != 0) return;
    long long nocc = st[ST_OCC];
    long long base = st[ST_MKBASE];
    long long nacc = st[ST_NACC];
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < nocc; g += stride) {
        int i = occ[g];
        int k = accepted_at(mk, i, base, nacc);
        if (k < 0) continue;
        u64 key = (u64)sel_get(sel, kmax, SEL_KEY, k);
        int a = key_left(key), b = key_right(key);
        int t = (int)sel_get(sel, kmax, SEL_TOK, k);
        int j = nxt[i];
        int r = nxt[j];
        int l = prv[i];
        long long w = counts[wrd[i]];
        bool right_half = l >= 0 && prv[l] >= 0 && accepted_at(mk, prv[l], base, nacc) >= 0;
        table_sub(keys, cnt, bits, key, w, st);
        if (r >= 0) {
            table_sub(keys, cnt, bits, pair_key(b, sym[r]), w, st);
            int kr = accepted_at(mk, r, base, nacc);
            int y = kr >= 0 ? (int)sel_get(sel, kmax, SEL_TOK, kr) : sym[r];
            table_add(keys, cnt, bits, used_limit, pair_key(t, y), w, st, newslots);
        }
        if (l >= 0 && !right_half) {
            table_sub(keys, cnt, bits, pair_key(sym[l], a), w, st);
            table_add(keys, cnt, bits, used_limit, pair_key(sym[l], t), w, st, newslots);
        }
        long long at = (long long)atomicAdd((u64*)&sel[(long long)SEL_FILL * kmax + k], 1ull);
        pool[sel_get(sel, kmax, SEL_POOL, k) + at] = i;
    }
}

// step_apply
//   Geometry: 1-D grid-stride, three loops; any grid.
//   In:  occ, mk, sel, st; newslots; the scratch table's used slots
//   Out: at each accepted occurrence i (right half j): sym[i] = t, sym[j] = -1,
//        j unlinked (no two occurrences write one element: i, j belong to one
//        occurrence, and prv[nxt[j]] is written only by the occurrence whose j
//        precedes it); each new slot with count >= ST_THRESH appended to cand
//        (ST_CFULL past cand_cap); the scratch slots of this step emptied.
//   Example: x a b c d y -> x t . u . y (dots removed, x <-> t <-> u <-> y).
extern "C" __global__ void step_apply(int* sym, int* nxt, int* prv, const int* __restrict__ mk,
                                      const int* __restrict__ occ, const long long* __restrict__ sel, int kmax,
                                      const long long* __restrict__ cnt, const long long* __restrict__ newslots,
                                      long long* cand, long long cand_cap, u64* skeys, long long* scnt,
                                      const long long* __restrict__ sused, long long slimit, long long* st) {
    long long stride = (long long)gridDim.x * blockDim.x;
    long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    // the scratch is emptied even when the step halted in step_decide (step_find had filled it)
    long long su = st[ST_SUSED];
    if (su > slimit) su = slimit;
    for (long long g = first; g < su; g += stride) {
        long long s = sused[g];
        if (s >= 0) {
            skeys[s] = EMPTY_KEY;
            scnt[s] = 0;
        }
    }
    if (st[ST_HALT] != 0) return;
    long long nocc = st[ST_OCC];
    long long base = st[ST_MKBASE];
    long long nacc = st[ST_NACC];
    for (long long g = first; g < nocc; g += stride) {
        int i = occ[g];
        int k = accepted_at(mk, i, base, nacc);
        if (k < 0) continue;
        int j = nxt[i];
        int r = nxt[j];
        sym[i] = (int)sel_get(sel, kmax, SEL_TOK, k);
        sym[j] = -1;
        nxt[i] = r;
        if (r >= 0) prv[r] = i;
        nxt[j] = -1;
        prv[j] = -1;
    }
    long long nnew = st[ST_NNEW];
    long long thresh = st[ST_THRESH];
    for (long long g = first; g < nnew; g += stride) {
        long long s = newslots[g];
        if (cnt[s] >= thresh && cnt[s] > 0) {
            long long at = (long long)atomicAdd((u64*)&st[ST_NCAND], 1ull);
            if (at < cand_cap) cand[at] = s;
            else st[ST_CFULL] = 1;
        }
    }
}
