// The device layout built on the device from what the host uploads: the
// WordTable's symbols as uint8 (every initial symbol is a byte) and its word
// offsets, 9 bytes per symbol over the bus instead of the 16 of four int32
// arrays. Loaded by gpubpe.backends.cuda.kernels.build_links.
#include "common.cuh"

// build_links
//   Geometry: 1-D grid-stride over positions; any grid.
//   In:  bytes[n] the symbols; off[nwords + 1] the words' offsets (CSR)
//   Out: sym[q] = bytes[q]; wrd[q] = the word holding q (binary search in off:
//        about 22 dependent reads at 2.7M words, all hitting L2 after the
//        first warps); nxt[q] / prv[q] = q + 1 / q - 1 inside the word, else -1.
//   Example: bytes "abc", off {0, 2, 3} -> wrd {0, 0, 1}, nxt {1, -1, -1},
//            prv {-1, 0, -1}.
extern "C" __global__ void build_links(const unsigned char* __restrict__ bytes, const long long* __restrict__ off,
                                       long long nwords, long long n, int* sym, int* nxt, int* prv, int* wrd) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
        long long lo = 0, hi = nwords;  // the last w with off[w] <= q, skipping empty words
        while (hi - lo > 1) {
            long long mid = (lo + hi) / 2;
            if (off[mid] <= q) lo = mid;
            else hi = mid;
        }
        sym[q] = (int)bytes[q];
        wrd[q] = (int)lo;
        nxt[q] = q + 1 < off[lo + 1] ? (int)(q + 1) : -1;
        prv[q] = q > off[lo] ? (int)(q - 1) : -1;
    }
}
