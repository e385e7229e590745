// One exact multi-merge step (DESIGN §1.4 "Steps"; the rule in plain Python:
// gpubpe/backends/steps.py). Loaded by gpubpe.backends.cuda.kernels.step_find,
// step_merge and step_select. A step is two launches, both sized from st on
// the device, so a CUDA graph of a batch of steps serves the whole run; the
// host reads st once per batch.
//
//   step_find   (grid)  A: the occurrences of the selected candidates and, per
//                       candidate, the largest count of a pair it alone would
//                       create; then its last block scans the long runs handed
//                       to it and decides the step (accepts the leading
//                       candidates the rule allows; commits their merges,
//                       tokens and token bytes)
//   step_merge  (grid)  B: every accepted occurrence: pair counts down and up,
//                       then the symbols rewritten; the scratch cleared; then
//                       its last block adds the new pairs at or above the
//                       threshold to the candidate set and selects the next
//                       step's candidates
//   step_select (1 block) the selection alone: the host launches it before the
//                       first batch and after it rebuilt, refilled, compacted
//                       or grew something (the selection B made is then stale)
//
// The last block. Each block of a grid launch, done with its grid-stride
// part, fences its writes and counts itself in st[ST_ARRIVED]; the block
// that counts last resets the counter and does the one-block part, reading
// what the others wrote with fresh() loads. No block ever waits for another,
// so the pattern holds on any schedule (and in the simulator, which runs
// blocks one at a time). A launch whose st[ST_HALT] is set on entry does
// nothing (step_merge still empties the scratch table) and counts no block;
// a halt raised during a launch is HALT_INTERNAL, which ends the run.
//
// Layout. Words are CSR spans of positions; inside the spans, the live symbols
// of a word form a doubly linked list (nxt / prv, -1 at the ends), in memory
// order, so merges remove symbols in O(1) and parallel merges never move each
// other's data. A removed symbol has sym = -1 (compact.cu squeezes them out
// now and then); between two live symbols of a word every slot is removed.
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
// pair of the table; when none is, the selection halts with HALT_REFILL and
// the host rescans the table with a lower threshold (about 25 times in a run).
//
// Occurrences. Inside a word, left to right and non-overlapping: for a != b
// every (a, b) position is one; for a == b, in a run of equal symbols only
// the even offsets from the run start merge. The run start walks its run; past
// run_walk members it hands the rest (from an even offset) to the last block
// of step_find, which scans the run's memory span with the whole block: the
// offsets are a block-wide prefix count of the live slots, so a run of L
// symbols costs L / (blockDim * RUN_UNROLL) rounds, not L dependent steps.
// Accepted merges are token-disjoint, so their occurrences are disjoint and
// merging them together equals merging them one after the other.
//
// Marks. step_find marks occurrence (i, j) of selected candidate k with
// mk[i] = mkr[j] = st[ST_MKBASE] + k (left and right half); the next
// selection advances the base past the step's marks, so old marks read as
// "none". A position is the left half of at most one selected pair and the
// right half of at most one (the pair is fixed by the position's symbols).
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
//
// Why step_merge may read and write the words in one launch. The rules read
// the pre-step state; other occurrences' rewrites land meanwhile, in any
// order. Occurrence (i, j) reads nxt[i], nxt[j] (written only by itself, after
// its reads), sym[r] (rewritten only when r starts an accepted occurrence k':
// then mk[r] says so and the pre-step symbol is a_k', from sel), sym[l] (only
// used when l is no right half: then no occurrence writes it), and prv[i]:
// when l is the right half j' of (i', j'), that occurrence's rewrite sets
// prv[i] = i'. Either value tells "right half": mkr[l] or mk[i'] is an
// accepted mark; otherwise prv[i] is l, unchanged. Marks are not written in
// step_merge. So every read sees its pre-step value, or one that the rule
// maps back to it.
#include "common.cuh"

#define SELF_TOKEN 0x7FFFFFFF  // in a scratch key: "the merge's own new token" ((t, t) pairs)

__device__ __forceinline__ long long sel_get(const long long* sel, int kmax, int f, long long k) {
    return sel[(long long)f * kmax + k];
}
__device__ __forceinline__ long long sel_fresh(const long long* sel, int kmax, int f, long long k) {
    return fresh(&sel[(long long)f * kmax + k]);
}
__device__ __forceinline__ void sel_put(long long* sel, int kmax, int f, long long k, long long v) {
    sel[(long long)f * kmax + k] = v;
}

// Every block calls this once, all threads, after its grid part; true in the
// one block that arrived last (the counter is reset for the next launch).
__device__ bool arrive_last(long long* st, long long* s_flag) {
    __threadfence();  // this thread's writes are visible before the block counts itself
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 before = atomicAdd((u64*)&st[ST_ARRIVED], 1ull);
        *s_flag = before == (u64)gridDim.x - 1;
        if (*s_flag) st[ST_ARRIVED] = 0;  // every block has counted: none reads it again in this launch
    }
    __syncthreads();
    bool last = *s_flag != 0;
    if (last) __threadfence();
    return last;
}

// The block's view of st[ST_HALT] on entry, the same for all its threads (a
// thread of the block may raise HALT_INTERNAL before another one reads it).
__device__ long long halt_on_entry(const long long* st, long long* s_halt) {
    if (threadIdx.x == 0) *s_halt = fresh(&st[ST_HALT]);
    __syncthreads();
    return *s_halt;
}

// The selection's record of selected candidate k, whose left token's list
// starts at lstart and comes after `pre` list entries of the candidates before it
__device__ __forceinline__ void sel_begin(long long* sel, int kmax, long long k, long long lstart, long long pre) {
    sel_put(sel, kmax, SEL_LSTART, k, lstart);
    sel_put(sel, kmax, SEL_PRE, k, pre);
    sel_put(sel, kmax, SEL_MAXC, k, 0);
    sel_put(sel, kmax, SEL_NOCC, k, 0);
    sel_put(sel, kmax, SEL_FILL, k, 0);
}

// The selection's status for a new step of nsel candidates whose lists hold
// `lists` entries: the last step's marks fall below the base, counters reset
__device__ __forceinline__ void step_begin(long long* st, long long nsel, long long lists) {
    st[ST_MKBASE] = fresh(&st[ST_MKBASE]) + fresh(&st[ST_NSEL]);
    st[ST_NSEL] = nsel;
    st[ST_NACC] = 0;
    st[ST_LISTS] = lists;
    st[ST_OCC] = 0;
    st[ST_NNEW] = 0;
    st[ST_SUSED] = 0;
    st[ST_SFULL] = 0;
    st[ST_RUNMAX] = 0;
    st[ST_NLONG] = 0;
    st[ST_RUNROUNDS] = 0;
    st[ST_LONGMAX] = 0;
}

// select_candidates: the selection (all threads of one block)
//   Called by: step_select (its own launch) and the last block of step_merge.
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
__device__ void select_candidates(const u64* keys, const long long* cnt, int bits, const unsigned char* tb,
                                  const long long* toff, const int* tlen, const long long* rank, int id_order,
                                  const int* forced, long long nforced, int max_len, const long long* cand,
                                  const long long* list_start, const long long* list_len, long long* sel, int kmax,
                                  long long* st) {
    __shared__ long long s_cnt[MAX_BLOCK * SELECT_LOCAL];
    __shared__ u64 s_key[MAX_BLOCK * SELECT_LOCAL];
    __shared__ long long s_slot[MAX_BLOCK * SELECT_LOCAL];
    __shared__ long long s_go;
    unsigned tid = threadIdx.x;
    __syncthreads();  // the caller's reads of st are done before thread 0 writes it
    if (tid == 0) {
        long long halt = 0;
        if (fresh(&st[ST_HALT])) halt = -1;  // raised during this launch (HALT_INTERNAL): keep it
        else if (fresh(&st[ST_TFULL])) halt = HALT_TABLE;
        else if (fresh(&st[ST_CFULL])) halt = HALT_CAND;
        else if (fresh(&st[ST_DONE]) >= fresh(&st[ST_LIMIT])) halt = HALT_LIMIT;
        s_go = halt == 0;
        if (halt > 0) st[ST_HALT] = halt;
    }
    __syncthreads();
    if (!s_go) return;
    long long done = fresh(&st[ST_DONE]);
    if (done < nforced) {
        // a parent model's merge, replayed: a step of exactly it, whatever
        // its count (absent from this table: it only makes its token)
        if (tid == 0) {
            int a = forced[2 * done], b = forced[2 * done + 1];
            u64 key = pair_key(a, b);
            long long slot = table_find(keys, bits, key);
            sel_put(sel, kmax, SEL_SLOT, 0, slot);
            sel_put(sel, kmax, SEL_CNT, 0, slot >= 0 ? fresh(&cnt[slot]) : 0);
            sel_put(sel, kmax, SEL_KEY, 0, (long long)key);
            sel_begin(sel, kmax, 0, list_start[a], 0);
            step_begin(st, 1, list_len[a]);
        }
        return;
    }
    long long thresh = fresh(&st[ST_THRESH]);
    long long ncand = fresh(&st[ST_NCAND]);
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
            rs[u] = e < ncand ? fresh(&cand[e]) : -1;
        }
        for (int u = 0; u < SELECT_UNROLL; ++u) {
            rc[u] = rs[u] >= 0 ? fresh(&cnt[rs[u]]) : -1;
            rk[u] = rs[u] >= 0 ? fresh_u64(&keys[rs[u]]) : EMPTY_KEY;
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
        long long want = fresh(&st[ST_WANT]);
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

// step_select
//   Geometry: exactly one block; blockDim a power of two <= MAX_BLOCK.
//   In/Out: as select_candidates above; a no-op when st[ST_HALT] is set.
//   Example: after a refill (thresh 5, cand counts {9, 7, 3, 7}) -> the
//            selection of select_candidates' example, st[ST_NSEL] = 3.
extern "C" __global__ void step_select(const u64* __restrict__ keys, const long long* __restrict__ cnt, int bits,
                                       const unsigned char* __restrict__ tb, const long long* __restrict__ toff,
                                       const int* __restrict__ tlen, const long long* __restrict__ rank, int id_order,
                                       const int* __restrict__ forced, long long nforced,
                                       int max_len, const long long* __restrict__ cand,
                                       const long long* __restrict__ list_start,
                                       const long long* __restrict__ list_len, long long* sel, int kmax,
                                       long long* st) {
    __shared__ long long s_halt;
    if (halt_on_entry(st, &s_halt)) return;
    select_candidates(keys, cnt, bits, tb, toff, tlen, rank, id_order, forced, nforced, max_len, cand, list_start,
                      list_len, sel, kmax, st);
}

// scratch_add: count w for created pair `key` of candidate k in the scratch
// table (open addressing; its used slots are listed in sused so step_merge
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

// Record occurrence (i, j) of selected candidate k: both marks, and i in occ
// at index `at` (reserved by the caller with one atomicAdd on st[ST_OCC]).
__device__ __forceinline__ void put_occurrence(int i, int j, int mark, int* mk, int* mkr, int* occ,
                                               long long occ_cap, long long at, long long* st) {
    mk[i] = mark;
    mkr[j] = mark;
    if (at >= occ_cap) {  // each position starts at most one selected pair: cannot happen
        st[ST_ERR] = 2;
        set_halt(st, HALT_INTERNAL);
        return;
    }
    occ[at] = i;
}

__device__ void emit_occurrence(int i, int j, int mark, int* mk, int* mkr, int* occ, long long occ_cap,
                                long long* sel, int kmax, int k, long long* st) {
    atomicAdd((u64*)&sel[(long long)SEL_NOCC * kmax + k], 1ull);
    put_occurrence(i, j, mark, mk, mkr, occ, occ_cap, (long long)atomicAdd((u64*)&st[ST_OCC], 1ull), st);
}

// The pairs a run's merges create alone (the walk's and the scan's common end):
// runs occurrences, l the run's left neighbour (or -1), odd: one a left over
// at the end, else `after` is the symbol after the run (or -1).
__device__ void run_created(const int* sym, int l, long long runs, bool odd, int a, int after, long long w,
                            u64* skeys, long long* scnt, int sbits, long long* sused, long long slimit,
                            long long* sel, int kmax, int k, long long* st) {
    if (runs == 0) return;
    if (l >= 0) scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 0, sym[l]), w, sel, kmax, k, st);
    if (runs > 1)
        scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, SELF_TOKEN), w * (runs - 1), sel, kmax, k,
                    st);
    if (odd) scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, a), w, sel, kmax, k, st);
    else if (after >= 0)
        scratch_add(skeys, scnt, sbits, sused, slimit, created_key(k, 1, sym[after]), w, sel, kmax, k, st);
}

// scan_long_runs: the runs step_find's threads handed over (all threads of its last block)
//   In:  lrun[LRUN_FIELDS * e]: p (a run member at an even offset from its
//        run start: the walk stopped there), k, the occurrences walked
//        before p, the run's left neighbour; for e < min(st[ST_NLONG], cap)
//   Out: as the walk would: the occurrences from p on (members at even
//        offsets from p with a next member), marks, occ, sel[NOCC][k], the
//        created pairs of the whole run; st RUNROUNDS, LONGMAX.
//   How: the block reads the run's memory span RUN_UNROLL slots a thread per
//   round. Between members every slot is removed (-1); the span ends at the
//   first slot that is live and not a, or of another word (or past npos).
//   A member's offset from p is the block-wide prefix count of the members
//   before it, so a round is a reduction and a scan over blockDim threads.
//   Example: p at offset 0 of a a a a a y (no removed slots), one round:
//            members 0..4, occurrences at 0 and 2, one a left over ->
//            created (t, t) once and (t, a) once; (x, t) if l exists.
__device__ void scan_long_runs(const int* sym, const int* nxt, const int* wrd, const long long* counts,
                               long long npos, int* mk, int* mkr, int* occ, long long occ_cap,
                               const long long* lrun, long long lrun_cap, long long* sel, int kmax, u64* skeys,
                               long long* scnt, int sbits, long long* sused, long long slimit, long long* st) {
    __shared__ long long s_scan[MAX_BLOCK];
    __shared__ long long s_stop[MAX_BLOCK];
    __shared__ long long s_last[MAX_BLOCK];
    unsigned tid = threadIdx.x;
    long long nlong = fresh(&st[ST_NLONG]);
    if (nlong > lrun_cap) nlong = lrun_cap;
    long long mbase = fresh(&st[ST_MKBASE]);
    long long rounds = 0;
    for (long long e = 0; e < nlong; ++e) {
        long long p = fresh(&lrun[LRUN_FIELDS * e]);
        int k = (int)fresh(&lrun[LRUN_FIELDS * e + 1]);
        long long runs = fresh(&lrun[LRUN_FIELDS * e + 2]);
        int l = (int)fresh(&lrun[LRUN_FIELDS * e + 3]);
        int a = key_left((u64)sel_get(sel, kmax, SEL_KEY, k));
        int w = wrd[p];
        int mark = (int)(mbase + k);
        long long members = 0;  // members from p before this round
        long long last = p;     // the last member so far
        const long long span = (long long)blockDim.x * RUN_UNROLL;
        for (long long r0 = p;; r0 += span) {
            ++rounds;
            // this thread's RUN_UNROLL slots: the first stopper, and its members before it
            long long lo = r0 + (long long)tid * RUN_UNROLL;
            int sy[RUN_UNROLL];
            bool live[RUN_UNROLL];
            long long stop = -1;
            for (int u = 0; u < RUN_UNROLL; ++u) {
                long long q = lo + u;
                sy[u] = q < npos ? sym[q] : -2;
                live[u] = q < npos && wrd[q] == w;
            }
            for (int u = RUN_UNROLL - 1; u >= 0; --u)
                if (!live[u] || (sy[u] != -1 && sy[u] != a)) stop = lo + u;
            s_stop[tid] = stop < 0 ? (1ll << 62) : stop;
            __syncthreads();
            for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
                if (tid < h && s_stop[tid + h] < s_stop[tid]) s_stop[tid] = s_stop[tid + h];
                __syncthreads();
            }
            long long S = s_stop[0];
            long long c = 0, mine = -1;
            for (int u = 0; u < RUN_UNROLL; ++u)
                if (lo + u < S && sy[u] == a) {
                    ++c;
                    mine = lo + u;
                }
            // inclusive scan of the member counts (Hillis-Steele), then exclusive = inclusive - own
            s_scan[tid] = c;
            s_last[tid] = mine;
            __syncthreads();
            for (unsigned d = 1; d < blockDim.x; d *= 2) {
                long long v = tid >= d ? s_scan[tid - d] : 0;
                long long m = tid >= d ? s_last[tid - d] : -1;
                __syncthreads();
                s_scan[tid] += v;
                if (m > s_last[tid]) s_last[tid] = m;
                __syncthreads();
            }
            long long rank = members + s_scan[tid] - c;  // this thread's first member's offset from p
            long long total = s_scan[blockDim.x - 1];
            long long round_last = s_last[blockDim.x - 1];
            // the occurrences: members at even offsets whose next live slot is a member
            int emit_i[RUN_UNROLL], emit_j[RUN_UNROLL];
            int ne = 0;
            for (int u = 0; u < RUN_UNROLL; ++u) {
                long long q = lo + u;
                if (q >= S || sy[u] != a) continue;
                if ((rank & 1) == 0) {
                    int j = nxt[q];
                    if (j >= 0 && sym[j] == a) {
                        emit_i[ne] = (int)q;
                        emit_j[ne] = j;
                        ++ne;
                    }
                }
                ++rank;
            }
            if (ne) {  // one reservation per thread and round, not one per occurrence
                long long at = (long long)atomicAdd((u64*)&st[ST_OCC], (u64)ne);
                atomicAdd((u64*)&sel[(long long)SEL_NOCC * kmax + k], (u64)ne);
                for (int x = 0; x < ne; ++x) put_occurrence(emit_i[x], emit_j[x], mark, mk, mkr, occ, occ_cap, at + x, st);
            }
            members += total;
            if (round_last >= 0) last = round_last;
            __syncthreads();  // s_scan / s_last read by all before the next round writes them
            if (S < r0 + span) break;
        }
        if (tid == 0) {
            long long walked = 2 * runs + members;
            if (walked > fresh(&st[ST_LONGMAX])) st[ST_LONGMAX] = walked;
            runs += members / 2;
            bool odd = (members & 1) != 0;
            run_created(sym, l, runs, odd, a, odd ? -1 : nxt[last], counts[w], skeys, scnt, sbits, sused, slimit,
                        sel, kmax, k, st);
        }
        __syncthreads();
    }
    if (tid == 0) st[ST_RUNROUNDS] = rounds;
}

// decide: accept the step's leading candidates (all threads of one block)
//   Called by: the last block of step_find.
//   In:  sel (after the occurrences are found), tb/toff/tlen, tb_cap, st;
//        min_count (0, or HF's min_frequency), nforced (the replayed merges:
//        never cut by it)
//   Out: st[ST_NACC] = the accepted candidates 0 .. NACC-1 (the rule of
//        gpubpe/backends/steps.py: the first always; then each while its count
//        is > the largest sel[MAXC] of those before it and it shares no token
//        with them; never past ST_LIMIT merges or the token buffer); for each:
//        merges[2m], merges[2m+1] = the pair (m = DONE + its index), mcount[m]
//        its count, token t = 256 + m with bytes(left) + bytes(right) in
//        tb/toff/tlen, sel[TOK] = t, list_start[t] / list_len[t] = where its
//        occurrences go in the pool and how many; st DONE, POOL_USED, DEAD,
//        TOKBYTES, STEPS, WANT (the next step selects 2 * NACC + 2 candidates).
//   Halts: HALT_TOKBUF when not even the first merge's bytes fit (nothing changes);
//        HALT_MIN_COUNT when the first candidate's count is below min_count (a
//        later one below it ends the step: counts only fall, so it ends the run).
//   Example: sel (e,r) 90 maxc 40, (t,h) 80 maxc 50, (e,s) 70 -> 2 accepted:
//            (e,s) shares e with (e,r).
__device__ void decide(unsigned char* tb, long long* toff, int* tlen, long long tb_cap, int* merges,
                       long long* mcount, long long min_count, long long nforced, long long* list_start,
                       long long* list_len, long long* sel, int kmax, long long* st) {
    // the candidates' records staged in shared memory by the whole block (one
    // round of independent loads), so the serial walk of thread 0 reads no
    // global memory; the bytes are then copied one byte per thread
    __shared__ long long s_cnt[DECIDE_MAX], s_maxc[DECIDE_MAX], s_nocc[DECIDE_MAX], s_oa[DECIDE_MAX],
        s_ob[DECIDE_MAX], s_boff[DECIDE_MAX + 1], s_ot[DECIDE_MAX];
    __shared__ u64 s_key[DECIDE_MAX];
    __shared__ int s_la[DECIDE_MAX], s_lb[DECIDE_MAX];
    __shared__ long long s_nacc;
    unsigned tid = threadIdx.x;
    long long nsel = fresh(&st[ST_NSEL]);
    for (long long k = tid; k < nsel; k += blockDim.x) {
        u64 key = (u64)sel_fresh(sel, kmax, SEL_KEY, k);
        int a = key_left(key), b = key_right(key);
        s_key[k] = key;
        s_cnt[k] = sel_fresh(sel, kmax, SEL_CNT, k);
        s_maxc[k] = sel_fresh(sel, kmax, SEL_MAXC, k);
        s_nocc[k] = sel_fresh(sel, kmax, SEL_NOCC, k);
        s_la[k] = tlen[a];
        s_lb[k] = tlen[b];
        s_oa[k] = toff[a];
        s_ob[k] = toff[b];
    }
    __syncthreads();
    if (tid == 0) {
        long long done = fresh(&st[ST_DONE]);
        long long limit = fresh(&st[ST_LIMIT]);
        long long o = fresh(&st[ST_TOKBYTES]);
        long long pool = fresh(&st[ST_POOL_USED]);
        bool one = fresh(&st[ST_SFULL]) != 0;
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
            st[ST_DEAD] = fresh(&st[ST_DEAD]) + removed;
            st[ST_TOKBYTES] = o;
            st[ST_STEPS] = fresh(&st[ST_STEPS]) + 1;
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

// step_find (launch A)
//   Geometry: 1-D grid-stride over the st[ST_LISTS] list entries of the
//   selected candidates; any grid; blockDim a power of two <= MAX_BLOCK.
//   In:  sel (SLOT..PRE), sym/nxt/prv/wrd/counts (npos positions), pool (the
//        lists), st; for the last block: lrun (lrun_cap records), and
//        decide's inputs (tb/toff/tlen, tb_cap, min_count, nforced)
//   Out: for each occurrence (q, j) of selected candidate k, as if k were
//        merged alone: mk[q] = mkr[j] = st[ST_MKBASE] + k, q appended to
//        occ[st[ST_OCC]++], sel[NOCC][k] += 1; the pairs this merge alone
//        would create counted in the scratch table under (k, side, other
//        token) and sel[MAXC][k] their largest count; st RUNMAX, and what
//        decide writes (above).
//   Created pairs alone, occurrence (i, j) of (a, b), l = prv[i], r = nxt[j]:
//     (t, t) if r starts another occurrence, else (t, sym[r]);
//     (sym[l], t) unless l is the right half of another occurrence.
//     For a != b, "r starts one" is sym[r] == a, sym[nxt[r]] == b, and "l is a
//     right half" is sym[l] == b, sym[prv[l]] == a. For a == b a run of
//     length L has floor(L/2) occurrences and creates (x, t) once, (t, t)
//     floor(L/2) - 1 times, then (t, y) if L is even, else (t, a). The run
//     start walks at most run_walk members; a longer run is handed over from
//     there (record (p, k, occurrences so far, l) in lrun) to the last block
//     (scan_long_runs), or walked on when lrun is full.
//   Example: x a a a a a y, (a, a) alone -> x t t a y: occurrences at offsets
//            0 and 2 of the run; created (x, t), (t, t), (t, a); (a, y) is not new.
extern "C" __global__ void step_find(const int* __restrict__ sym, const int* __restrict__ nxt,
                                     const int* __restrict__ prv, const int* __restrict__ wrd,
                                     const long long* __restrict__ counts, long long npos, int* mk, int* mkr,
                                     const int* __restrict__ pool, int* occ, long long occ_cap, long long* sel,
                                     int kmax, u64* skeys, long long* scnt, int sbits, long long* sused,
                                     long long slimit, long long* lrun, long long lrun_cap, int run_walk,
                                     unsigned char* tb, long long* toff, int* tlen, long long tb_cap, int* merges,
                                     long long* mcount, long long min_count, long long nforced,
                                     long long* list_start, long long* list_len, long long* st) {
    __shared__ long long s_halt, s_last;
    if (halt_on_entry(st, &s_halt)) return;
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
        int mark = (int)(base + k);
        u64 key = (u64)sel_get(sel, kmax, SEL_KEY, k);
        int a = key_left(key), b = key_right(key);
        int q = pool[sel_get(sel, kmax, SEL_LSTART, k) + (g - sel_get(sel, kmax, SEL_PRE, k))];
        if (sym[q] != a) continue;  // merged into a later token since
        long long w = counts[wrd[q]];
        if (a != b) {
            int j = nxt[q];
            if (j < 0 || sym[j] != b) continue;
            emit_occurrence(q, j, mark, mk, mkr, occ, occ_cap, sel, kmax, k, st);
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
        long long runs = 0, walked = 0;
        int r = q, after = -1;
        bool odd = false, handed = false;
        long long walk = run_walk;
        while (true) {  // r: a member at an even offset from the run start
            int n1 = nxt[r];
            if (n1 < 0 || sym[n1] != a) {  // r ends the run with one a left over
                odd = true;
                break;
            }
            if (walked >= walk) {  // long: the last block scans the rest
                long long e = (long long)atomicAdd((u64*)&st[ST_NLONG], 1ull);
                if (e < lrun_cap) {
                    lrun[LRUN_FIELDS * e] = r;
                    lrun[LRUN_FIELDS * e + 1] = k;
                    lrun[LRUN_FIELDS * e + 2] = runs;
                    lrun[LRUN_FIELDS * e + 3] = l;
                    handed = true;
                    break;
                }
                walk = 1ll << 62;  // no record left: walk it all (exact, serial)
            }
            emit_occurrence(r, n1, mark, mk, mkr, occ, occ_cap, sel, kmax, k, st);
            ++runs;
            walked += 2;
            int n2 = nxt[n1];
            if (n2 < 0 || sym[n2] != a) {
                after = n2;
                break;
            }
            r = n2;
        }
        if (walked > st[ST_RUNMAX]) atomicMax(&st[ST_RUNMAX], walked);  // for the cost model: the serial walk
        if (!handed)
            run_created(sym, l, runs, odd, a, after, w, skeys, scnt, sbits, sused, slimit, sel, kmax, k, st);
    }
    if (!arrive_last(st, &s_last)) return;
    scan_long_runs(sym, nxt, wrd, counts, npos, mk, mkr, occ, occ_cap, lrun, lrun_cap, sel, kmax, skeys, scnt, sbits,
                   sused, slimit, st);
    __syncthreads();
    if (threadIdx.x == 0) s_halt = fresh(&st[ST_HALT]);  // HALT_INTERNAL raised during the launch
    __syncthreads();
    if (s_halt) return;
    decide(tb, toff, tlen, tb_cap, merges, mcount, min_count, nforced, list_start, list_len, sel, kmax, st);
}

// The accepted candidate whose mark is at position p of marks (mk or mkr), or -1.
__device__ __forceinline__ int accepted_at(const int* marks, int p, long long base, long long nacc) {
    long long m = (long long)marks[p] - base;
    return m >= 0 && m < nacc ? (int)m : -1;
}

// step_merge (launch B)
//   Geometry: 1-D grid-stride over the scratch slots used and the
//   st[ST_OCC] occurrences; any grid; blockDim a power of two <= MAX_BLOCK.
//   In:  occ, mk, mkr, sel (KEY, TOK, POOL), sym/nxt/prv/wrd/counts, st; for
//        the last block: newslots, cand (cand_cap), and the selection's
//        inputs (select_candidates above)
//   Out: the scratch slots of this step emptied (also when the step halted:
//        step_find had filled them); for each accepted occurrence (i, j) of
//        merge k -> t (occurrences of candidates not accepted are skipped):
//        the pair counts of the neighbour rules above (cnt, keys; new keys'
//        slots listed in newslots), i appended to list(t) in the pool, then
//        sym[i] = t, sym[j] = -1, j unlinked (no two occurrences write one
//        element: i, j belong to one occurrence, and prv[nxt[j]] is written
//        only by the occurrence whose j precedes it). The last block: each
//        new slot with count >= ST_THRESH appended to cand (ST_CFULL past
//        cand_cap), then the next step's selection.
//   Example: x a b c d y, (a,b) -> t and (c,d) -> u: (a,b), (b,c), (x,a),
//            (c,d), (d,y) each lose w; (x,t), (t,u), (u,y) each gain w;
//            x a b c d y -> x t . u . y (dots removed, x <-> t <-> u <-> y).
extern "C" __global__ void step_merge(int* sym, int* nxt, int* prv, const int* __restrict__ mk,
                                      const int* __restrict__ mkr, const int* __restrict__ wrd,
                                      const long long* __restrict__ counts, const int* __restrict__ occ, int* pool,
                                      long long* sel, int kmax, u64* keys, long long* cnt, int bits,
                                      long long used_limit, long long* newslots, u64* skeys, long long* scnt,
                                      const long long* __restrict__ sused, long long slimit,
                                      const unsigned char* __restrict__ tb, const long long* __restrict__ toff,
                                      const int* __restrict__ tlen, const long long* __restrict__ rank, int id_order,
                                      const int* __restrict__ forced, long long nforced, int max_len,
                                      long long* cand, long long cand_cap, const long long* __restrict__ list_start,
                                      const long long* __restrict__ list_len, long long* st) {
    __shared__ long long s_halt, s_last;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long first = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long su = st[ST_SUSED];
    if (su > slimit) su = slimit;
    for (long long g = first; g < su; g += stride) {  // nothing in this launch reads the scratch
        long long s = sused[g];
        if (s >= 0) {
            skeys[s] = EMPTY_KEY;
            scnt[s] = 0;
        }
    }
    if (halt_on_entry(st, &s_halt)) return;
    long long nocc = st[ST_OCC];
    long long base = st[ST_MKBASE];
    long long nacc = st[ST_NACC];
    for (long long g = first; g < nocc; g += stride) {
        int i = occ[g];
        int k = accepted_at(mk, i, base, nacc);
        if (k < 0) continue;
        u64 key = (u64)sel_get(sel, kmax, SEL_KEY, k);
        int a = key_left(key), b = key_right(key);
        int t = (int)sel_get(sel, kmax, SEL_TOK, k);
        // the reads (see "Why step_merge may read and write the words in one launch")
        int j = nxt[i];
        int r = nxt[j];
        int lp = prv[i];  // l, or i' once (i', l) has been rewritten
        bool right_half = lp >= 0 && (accepted_at(mkr, lp, base, nacc) >= 0 || accepted_at(mk, lp, base, nacc) >= 0);
        long long w = counts[wrd[i]];
        table_sub(keys, cnt, bits, key, w, st);
        if (r >= 0) {
            int kr = accepted_at(mk, r, base, nacc);
            int x = kr >= 0 ? key_left((u64)sel_get(sel, kmax, SEL_KEY, kr)) : sym[r];  // r's pre-step symbol
            int y = kr >= 0 ? (int)sel_get(sel, kmax, SEL_TOK, kr) : x;                // and its new one
            table_sub(keys, cnt, bits, pair_key(b, x), w, st);
            table_add(keys, cnt, bits, used_limit, pair_key(t, y), w, st, newslots);
        }
        if (lp >= 0 && !right_half) {
            int xl = sym[lp];
            table_sub(keys, cnt, bits, pair_key(xl, a), w, st);
            table_add(keys, cnt, bits, used_limit, pair_key(xl, t), w, st, newslots);
        }
        long long at = (long long)atomicAdd((u64*)&sel[(long long)SEL_FILL * kmax + k], 1ull);
        pool[sel_get(sel, kmax, SEL_POOL, k) + at] = i;
        // the writes
        sym[i] = t;
        sym[j] = -1;
        nxt[i] = r;
        if (r >= 0) prv[r] = i;
        nxt[j] = -1;
        prv[j] = -1;
    }
    if (!arrive_last(st, &s_last)) return;
    // every count of the step is final: new pairs at or above the threshold join the set
    long long nnew = fresh(&st[ST_NNEW]);
    long long thresh = fresh(&st[ST_THRESH]);
    for (long long g = threadIdx.x; g < nnew; g += blockDim.x) {
        long long s = fresh(&newslots[g]);
        long long c = fresh(&cnt[s]);
        if (c >= thresh && c > 0) {
            long long at = (long long)atomicAdd((u64*)&st[ST_NCAND], 1ull);
            if (at < cand_cap) cand[at] = s;
            else st[ST_CFULL] = 1;
        }
    }
    select_candidates(keys, cnt, bits, tb, toff, tlen, rank, id_order, forced, nforced, max_len, cand, list_start,
                      list_len, sel, kmax, st);
}
