// Compaction: drop removed symbols and words that can no longer change (one
// live symbol left), so scans and the position pool shrink as merges proceed.
// Loaded by gpubpe.backends.cuda.kernels.compact_mark / compact_scatter.
// The exclusive scan between the two launches is CuPy's cumsum (NumPy's in
// the simulator): a library scan is as fast as a custom one and runs rarely
// (when removed symbols pass config.CUDA_COMPACT_FRACTION of all positions).
#include "common.cuh"

// compact_mark
//   Geometry: 1-D grid-stride over positions; any grid.
//   In:  sym, nxt, prv, wrd, counts (n positions)
//   Out: keep[q] = 1 for a live symbol with a live neighbour, else 0;
//        st[ST_DROPPED] += the weight of each live symbol dropped (its word is
//        one token from now on, and the token total still counts it)
//   Example: words "ab" and "c" (x3): keep 1, 1, 0; ST_DROPPED += 3.
extern "C" __global__ void compact_mark(const int* __restrict__ sym, const int* __restrict__ nxt,
                                        const int* __restrict__ prv, const int* __restrict__ wrd,
                                        const long long* __restrict__ counts, long long n, int* keep,
                                        long long* st) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
        bool live = sym[q] >= 0;
        bool k = live && (nxt[q] >= 0 || prv[q] >= 0);
        keep[q] = k ? 1 : 0;
        if (live && !k) atomicAdd((u64*)&st[ST_DROPPED], (u64)counts[wrd[q]]);
    }
}

// compact_scatter
//   Geometry: 1-D grid-stride over positions; any grid.
//   In:  keep[n], newpos[n] = exclusive prefix sum of keep; sym, nxt, prv, wrd
//   Out: the kept positions, in order, at out_*[newpos[q]] with the links
//        renumbered (a kept symbol's neighbours are kept too).
//   Example: sym {a, -1, b, c}, keep {1, 0, 1, 0}, newpos {0, 1, 1, 2} -> {a, b}.
extern "C" __global__ void compact_scatter(const int* __restrict__ sym, const int* __restrict__ nxt,
                                           const int* __restrict__ prv, const int* __restrict__ wrd,
                                           const int* __restrict__ keep, const long long* __restrict__ newpos,
                                           long long n, int* out_sym, int* out_nxt, int* out_prv,
                                           int* out_wrd) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
        if (!keep[q]) continue;
        long long d = newpos[q];
        int r = nxt[q];
        int l = prv[q];
        out_sym[d] = sym[q];
        out_wrd[d] = wrd[q];
        out_nxt[d] = r >= 0 ? (int)newpos[r] : -1;
        out_prv[d] = l >= 0 ? (int)newpos[l] : -1;
    }
}
