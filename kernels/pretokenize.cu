// GPT-2 pre-tokenization on the device: where special tokens may start; per
// byte, the character it starts (if any) and its class; per character, whether
// a pre-token starts there; then the pre-tokens as spans. Loaded by
// gpubpe.backends.cuda.kernels.pretok_specials, pretok_classify, pretok_count
// and pretok_spans (driver: gpubpe.pretok.device).
//
// The pattern (the same as gpubpe/pretok/machine.py, which states the semantics)
//     '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// on piece.decode("utf-8", "surrogateescape"). Whether a pre-token starts at a
// character is decided by a few characters around it, never across a piece edge
// (the bytes of a special token are no piece's: lookbehind and lookahead stop there).
//
// UTF-8 (Unicode Table 3-7, as the CPU machine): a byte is a continuation of a
// character iff a well-formed sequence starting 1, 2 or 3 bytes before it (in
// the same piece) covers it; a byte that starts a well-formed sequence is one
// character of its code point's class; every other byte is one character of
// class "other" (regex sees U+DC80..U+DCFF). Why local: a well-formed sequence
// starts with a lead byte C2..F4, which no other sequence covers, so left to
// right decoding always takes it as a character start.
//
// The boundary rule, at a character start i of a piece (p the character
// before, q the one at i; "contraction at j": the byte at j is ' , a pre-token
// starts at j, and s d m t or ll ve re follow inside the piece):
//   1. i is the piece's first character: a start.
//   2. i is inside a contraction (at j = i-1, or j = i-2 of length 3): no start;
//      i right after one (j = i-2 of length 2, j = i-3 of length 3): a start,
//      even when a letter follows ("'sa" -> "'s", "a").
//   3. q is ' : a start iff p is a letter, a number or a whitespace other than
//      U+0020 (an "other" p continues its run over the ', and a U+0020 p joins
//      the ' : " 's" -> " '", "s"). This is also "a pre-token starts at j" above.
//   4. p is whitespace: if q is whitespace, a start iff the character after q
//      is in the piece and not whitespace (\s+(?!\S) leaves the last one of a
//      run of 2+ to the next pre-token); else a start iff p is not U+0020
//      (a U+0020 followed by a non-space always begins a pre-token, and joins).
//   5. p is not whitespace: a start iff q is whitespace or of another class.
// tests/test_device_pretok.py holds this against regex on fuzzed text.
#include "common.cuh"

// info[i]: what byte i is (pretok_classify writes it, the others read it)
#define PT_CLASS 3       // bits 0-1: the class of the character starting here
#define PT_START 4       // a character starts here
#define PT_SP20 8        // that character is U+0020
#define PT_PIECE 16      // the byte belongs to a piece (not to a special token)
#define PT_OTHER 0
#define PT_LETTER 1
#define PT_NUMBER 2
#define PT_SPACE 3
#define PT_TILE 64       // positions per thread in pretok_count / pretok_spans

// The length of the well-formed sequence at j, 0 if none, reading no byte at
// or past hi; *cp its code point.
__device__ int utf8_at(const unsigned char* d, long long j, long long hi, int* cp) {
    int b = d[j];
    if (b < 0x80) { *cp = b; return 1; }
    int k, lo = 0x80, up = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) k = 2;
    else if (b >= 0xE0 && b <= 0xEF) { k = 3; if (b == 0xE0) lo = 0xA0; if (b == 0xED) up = 0x9F; }
    else if (b >= 0xF0 && b <= 0xF4) { k = 4; if (b == 0xF0) lo = 0x90; if (b == 0xF4) up = 0x8F; }
    else return 0;
    if (j + k > hi) return 0;
    int c1 = d[j + 1];
    if (c1 < lo || c1 > up) return 0;
    int v = (k == 2 ? (b & 0x1F) : k == 3 ? (b & 0x0F) : (b & 0x07));
    v = (v << 6) | (c1 & 0x3F);
    for (int t = 2; t < k; ++t) {
        int c = d[j + t];
        if (c < 0x80 || c > 0xBF) return 0;
        v = (v << 6) | (c & 0x3F);
    }
    *cp = v;
    return k;
}

// pretok_specials
//   Geometry: 1-D grid-stride over bytes; any grid.
//   In:  data[n]; the special tokens longest first (the order of
//        gpubpe.corpus.special_regex), their bytes back to back in sp_bytes,
//        token t at sp_bytes[sp_off[t]:sp_off[t + 1]], nsp <= 255 of them
//   Out: mark[i] = t + 1 for the first token t (longest first) whose bytes
//        start at i, else 0. Candidates only: matches may overlap; the host
//        keeps the leftmost ones that do not (few per chunk), as a regex
//        alternation scanning left to right would.
//   Example: data "a<|e|><|e|>", tokens {"<|e|><|e|>", "<|e|>"} -> mark {0, 1, 0, 0, 0, 0, 2, 0, ...}.
extern "C" __global__ void pretok_specials(const unsigned char* __restrict__ data, long long n,
                                           const unsigned char* __restrict__ sp_bytes,
                                           const long long* __restrict__ sp_off, int nsp, unsigned char* mark) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        int m = 0;
        for (int t = 0; t < nsp && !m; ++t) {
            long long a = sp_off[t], len = sp_off[t + 1] - a;
            if (i + len > n || data[i] != sp_bytes[a]) continue;
            long long q = 1;
            while (q < len && data[i + q] == sp_bytes[a + q]) ++q;
            if (q == len) m = t + 1;
        }
        mark[i] = (unsigned char)m;
    }
}

// pretok_classify
//   Geometry: 1-D grid-stride over bytes; any grid.
//   In:  data[n]; sp_start / sp_end[nspec]: the special tokens' byte spans in
//        data, sorted, disjoint; the class tables cls[256] (ASCII), bmp[65536]
//        (below U+10000), stage1[0x1100] / stage2 (the two-level table), as
//        gpubpe.pretok.unicode.scan_tables() makes them (stage1 as int32)
//   Out: info[n] (PT_* bits): PT_PIECE outside specials; at a character start
//        PT_START, its class, PT_SP20 for U+0020; a continuation byte: PT_PIECE only
//   Example: "a\xc3\xa9 \xff" -> {PIECE|START|LETTER, PIECE|START|LETTER, PIECE,
//            PIECE|START|SP20|SPACE, PIECE|START|OTHER}
extern "C" __global__ void pretok_classify(const unsigned char* __restrict__ data, long long n,
                                           const long long* __restrict__ sp_start,
                                           const long long* __restrict__ sp_end, long long nspec,
                                           const unsigned char* __restrict__ cls,
                                           const unsigned char* __restrict__ bmp,
                                           const int* __restrict__ stage1,
                                           const unsigned char* __restrict__ stage2, unsigned char* info) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        // the piece around i: after the last special starting at or before i, before the next
        long long a = 0, b = nspec;  // first special with start > i
        while (a < b) {
            long long m = (a + b) / 2;
            if (sp_start[m] <= i) a = m + 1;
            else b = m;
        }
        long long lo = a > 0 ? sp_end[a - 1] : 0;
        long long hi = a < nspec ? sp_start[a] : n;
        if (i < lo) { info[i] = 0; continue; }  // inside special a - 1
        int cp;
        bool covered = false;
        for (int back = 1; back <= 3 && i - back >= lo; ++back) {
            if (utf8_at(data, i - back, hi, &cp) > back) { covered = true; break; }
        }
        if (covered) { info[i] = PT_PIECE; continue; }
        int k = utf8_at(data, i, hi, &cp);
        int c;
        if (k == 0) c = PT_OTHER;
        else if (k == 1) c = cls[cp];
        else if (cp < 0x10000) c = bmp[cp];
        else c = stage2[(long long)stage1[cp >> 8] * 256 + (cp & 255)];
        info[i] = (unsigned char)(PT_PIECE | PT_START | c | (cp == 0x20 && k == 1 ? PT_SP20 : 0));
    }
}

__device__ __forceinline__ bool in_piece(const unsigned char* info, long long j, long long n) {
    return j >= 0 && j < n && (info[j] & PT_PIECE);
}

// The start of the character before the character start j (j not a piece start).
__device__ __forceinline__ long long prev_char(const unsigned char* info, long long j) {
    long long p = j - 1;
    while (!(info[p] & PT_START)) --p;  // at most 3 steps: the piece's first byte is a start
    return p;
}

// Does a pre-token start at the ' at j (rule 3 / rule 1 at the piece start)?
__device__ bool quote_starts(const unsigned char* info, long long j, long long n) {
    if (!in_piece(info, j - 1, n)) return true;
    int x = info[prev_char(info, j)];
    return (x & PT_CLASS) != PT_OTHER && !(x & PT_SP20);
}

// The length of the contraction at j (2 or 3), 0 if none; j in a piece.
__device__ int contraction_at(const unsigned char* data, const unsigned char* info, long long j, long long n) {
    if (data[j] != 0x27 || !in_piece(info, j + 1, n) || !quote_starts(info, j, n)) return 0;
    int c = data[j + 1];
    if (c == 's' || c == 'd' || c == 'm' || c == 't') return 2;
    if (!in_piece(info, j + 2, n)) return 0;
    int e = data[j + 2];
    if ((c == 'l' && e == 'l') || (c == 'v' && e == 'e') || (c == 'r' && e == 'e')) return 3;
    return 0;
}

// 1: a pre-token starts at i; 2: a piece ends at i (i == n included); 0: neither.
__device__ int edge_at(const unsigned char* data, const unsigned char* info, long long i, long long n) {
    if (i == n) return in_piece(info, n - 1, n) ? 2 : 0;
    int x = info[i];
    if (!(x & PT_PIECE)) return in_piece(info, i - 1, n) ? 2 : 0;
    if (!(x & PT_START)) return 0;
    if (!in_piece(info, i - 1, n)) return 1;  // rule 1
    // rule 2: the bytes of a contraction are ASCII, so each is a character
    if (data[i - 1] == 0x27 && contraction_at(data, info, i - 1, n) >= 2) return 0;
    if (in_piece(info, i - 2, n)) {
        int c2 = data[i - 2] == 0x27 ? contraction_at(data, info, i - 2, n) : 0;
        if (c2 == 3) return 0;
        if (c2 == 2) return 1;
        if (in_piece(info, i - 3, n) && data[i - 3] == 0x27 && contraction_at(data, info, i - 3, n) == 3) return 1;
    }
    if (data[i] == 0x27) return quote_starts(info, i, n) ? 1 : 0;  // rule 3
    int px = info[prev_char(info, i)];
    int cp = px & PT_CLASS, cq = x & PT_CLASS;
    if (cp == PT_SPACE) {  // rule 4
        if (cq != PT_SPACE) return (px & PT_SP20) ? 0 : 1;
        long long r = i + 1;
        while (r < n && (info[r] & PT_PIECE) && !(info[r] & PT_START)) ++r;
        return in_piece(info, r, n) && (info[r] & PT_CLASS) != PT_SPACE ? 1 : 0;
    }
    return (cq == PT_SPACE || cp != cq) ? 1 : 0;  // rule 5
}

// pretok_count
//   Geometry: 1-D grid-stride over tiles of PT_TILE positions of [0, n]; any grid.
//   In:  data[n], info[n] (pretok_classify)
//   Out: tcount[t] = the edges (pre-token starts and piece ends) at positions
//        t * PT_TILE .. (t + 1) * PT_TILE - 1 (position n is the end of data)
//   Example: "ab c" (n = 4, one tile): edges at 0, 2 and 4 -> tcount {3}.
extern "C" __global__ void pretok_count(const unsigned char* __restrict__ data,
                                        const unsigned char* __restrict__ info, long long n,
                                        long long ntiles, int* tcount) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < ntiles; t += stride) {
        long long lo = t * PT_TILE, hi = lo + PT_TILE < n + 1 ? lo + PT_TILE : n + 1;
        int c = 0;
        for (long long i = lo; i < hi; ++i) c += edge_at(data, info, i, n) != 0;
        tcount[t] = c;
    }
}

// pretok_spans
//   Geometry: as pretok_count.
//   In:  data[n], info[n]; toff[t] = the edges before tile t (exclusive prefix sum of tcount)
//   Out: pos[toff[t] + k] for the k-th edge of tile t: i for a pre-token start
//        at i, ~i (= -i - 1) for a piece end at i. A pre-token starting at
//        pos[k] ends at the next edge's position.
//   Example: "ab c" -> pos {0, 2, ~4}: pre-tokens "ab" = [0, 2), " c" = [2, 4).
extern "C" __global__ void pretok_spans(const unsigned char* __restrict__ data,
                                        const unsigned char* __restrict__ info, long long n,
                                        long long ntiles, const long long* __restrict__ toff, int* pos) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < ntiles; t += stride) {
        long long lo = t * PT_TILE, hi = lo + PT_TILE < n + 1 ? lo + PT_TILE : n + 1;
        long long o = toff[t];
        for (long long i = lo; i < hi; ++i) {
            int e = edge_at(data, info, i, n);
            if (e == 1) pos[o++] = (int)i;
            else if (e == 2) pos[o++] = ~(int)i;
        }
    }
}
