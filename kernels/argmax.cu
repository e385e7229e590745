// The argmax: the pair to merge next, with the exact tie rule (DESIGN §1.4).
// Loaded by gpubpe.backends.cuda.kernels.argmax_partial / argmax_final.
//
// Two launches per merge: argmax_partial reduces the table to one candidate
// per block, argmax_final reduces the candidates in one block and commits the
// merge. A single launch with a "last block finishes" counter would save one
// launch but needs __threadfence ordering that the simulator cannot check, and
// the launches are captured in a CUDA graph anyway.
//
// The tie rule compares token bytes, so the device keeps every token's bytes:
// tb (a byte buffer), toff (int64 offset per token), tlen (int32 length).
// Lexicographic ranks were the alternative: comparing two ints is cheaper, but
// each new token shifts the rank of every greater token (O(V) per merge) and
// ties are rare, so the byte comparison runs on few candidates. Counts are
// compared first; bytes only on equal counts.
#include "common.cuh"

// block_best: every thread offers its candidate slot; a tree reduction in
// shared memory leaves the block's best in best_s[0]. All threads of the block
// must call it (it holds __syncthreads).
__device__ void block_best(long long* best_s, long long mine, const u64* keys, const long long* cnt,
                           const unsigned char* tb, const long long* toff, const int* tlen) {
    unsigned tid = threadIdx.x;
    best_s[tid] = mine;
    __syncthreads();
    for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
        if (tid < half && slot_above(best_s[tid + half], best_s[tid], keys, cnt, tb, toff, tlen))
            best_s[tid] = best_s[tid + half];
        __syncthreads();
    }
}

// argmax_partial
//   Geometry: 1-D, any grid; blockDim a power of two <= MAX_BLOCK.
//   In:  keys/cnt (capacity 1 << bits), tb/toff/tlen, max_len (0: no cap; else a
//        pair whose merged token would exceed max_len bytes is never a candidate:
//        token lengths never change, so it never becomes one), st (no-op when halted)
//   Out: part[blockIdx.x] = the block's best slot with count > 0, or -1
//   Example: cnt {s3: 5, s7: 5, s9: 2}, bytes(left of s7) > bytes(left of s3) -> s7;
//            with max_len 3 and s3, s7 making 4-byte tokens -> s9.
extern "C" __global__ void argmax_partial(const u64* __restrict__ keys, const long long* __restrict__ cnt,
                                          int bits, const unsigned char* __restrict__ tb,
                                          const long long* __restrict__ toff, const int* __restrict__ tlen,
                                          int max_len, long long* part, const long long* st) {
    __shared__ long long best_s[MAX_BLOCK];
    if (st[ST_HALT] != 0) return;  // uniform: st does not change during this launch
    long long cap = 1ll << bits;
    long long best = -1;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < cap; s += stride) {
        if (cnt[s] > 0 && (max_len <= 0 || tlen[keys[s] >> 32] + tlen[keys[s] & 0xFFFFFFFFull] <= max_len) &&
            slot_above(s, best, keys, cnt, tb, toff, tlen))
            best = s;
    }
    unsigned tid = threadIdx.x;
    block_best(best_s, best, keys, cnt, tb, toff, tlen);
    if (tid == 0) part[blockIdx.x] = best_s[0];
}

// argmax_final
//   Geometry: exactly one block; blockDim a power of two <= MAX_BLOCK.
//   In:  part[nparts] from argmax_partial; keys/cnt; tb/toff/tlen; st
//   Out, when a pair with count > 0 exists and the token buffer has room:
//        merges[2m], merges[2m+1] = (left, right) with m = st[ST_DONE];
//        token 256 + m gets bytes(left) + bytes(right) in tb, toff, tlen;
//        list_start[t] = where this merge's occurrences go in the pool, and
//        list_len of the previous merge's token = its occurrence count;
//        st: DONE = m + 1, A/B = the pair, the occurrence list reset to start
//        at the end of the position pool.
//   Otherwise st[ST_HALT] = HALT_NO_PAIR or HALT_TOKBUF and nothing changes.
//   Example: part {s7, -1, s3} -> s7 (as above); merges[2m..] = key of s7.
extern "C" __global__ void argmax_final(const u64* __restrict__ keys, const long long* __restrict__ cnt,
                                        unsigned char* tb, long long* toff, int* tlen, long long tb_cap,
                                        const long long* __restrict__ part, int nparts, int* merges,
                                        long long* list_start, long long* list_len, long long* st) {
    __shared__ long long best_s[MAX_BLOCK];
    __shared__ long long copy_s[4];  // src_a, src_b, dst, go
    if (st[ST_HALT] != 0) return;
    unsigned tid = threadIdx.x;
    long long best = -1;
    for (int i = (int)tid; i < nparts; i += (int)blockDim.x) {
        if (slot_above(part[i], best, keys, cnt, tb, toff, tlen)) best = part[i];
    }
    block_best(best_s, best, keys, cnt, tb, toff, tlen);
    int a = 0, b = 0, la = 0, lb = 0;
    if (tid == 0) {
        copy_s[3] = 0;
        long long s = best_s[0];
        if (s < 0) {
            st[ST_HALT] = HALT_NO_PAIR;
        } else {
            long long m = st[ST_DONE];
            int t = 256 + (int)m;
            a = key_left(keys[s]);
            b = key_right(keys[s]);
            la = tlen[a];
            lb = tlen[b];
            long long o = st[ST_TOKBYTES];
            if (o + la + lb > tb_cap) {
                st[ST_HALT] = HALT_TOKBUF;
            } else {
                toff[t] = o;
                tlen[t] = la + lb;
                st[ST_TOKBYTES] = o + la + lb;
                merges[2 * m] = a;
                merges[2 * m + 1] = b;
                long long pend = st[ST_PENDING];
                if (pend >= 0) list_len[pend] = st[ST_NOCC];
                st[ST_PENDING] = t;
                st[ST_POOL_USED] += st[ST_NOCC];
                st[ST_DEAD] += st[ST_NOCC];
                st[ST_OCC_START] = st[ST_POOL_USED];
                list_start[t] = st[ST_OCC_START];
                st[ST_NOCC] = 0;
                st[ST_A] = a;
                st[ST_B] = b;
                st[ST_DONE] = m + 1;
                copy_s[0] = toff[a];
                copy_s[1] = toff[b];
                copy_s[2] = o;
                copy_s[3] = ((long long)la << 32) | (long long)lb;
            }
        }
    }
    __syncthreads();
    long long packed = copy_s[3];
    if (packed == 0) return;  // halted (a committed merge has la, lb >= 1)
    la = (int)(packed >> 32);
    lb = (int)(packed & 0xFFFFFFFFll);
    // the new token's bytes, copied by the whole block (tokens can be long:
    // a run of spaces in code gives tokens of hundreds of bytes)
    for (int i = (int)tid; i < la + lb; i += (int)blockDim.x) {
        tb[copy_s[2] + i] = i < la ? tb[copy_s[0] + i] : tb[copy_s[1] + (i - la)];
    }
}
