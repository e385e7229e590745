"""Each CUDA kernel, run through the simulator (host-compiled, shuffled thread
and block order, AddressSanitizer), against a NumPy/Python reference on random
and adversarial inputs. The same tests run on a device with ``-m gpu``."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ._helpers import max_examples
from gpubpe.backends.cuda import kernels as K

EMPTY = int(K.EMPTY_KEY)


class Env:
    """Kernels plus array helpers for one launcher (simulator or device)."""

    def __init__(self, device: bool):
        if device:
            import cupy

            self.launcher = K.DeviceLauncher()
            self.put = lambda a: cupy.asarray(np.ascontiguousarray(a))
            self.get = cupy.asnumpy
        else:
            from gpubpe.backends.cuda import sim as _sim

            self.launcher = _sim.SimLauncher()
            self.put = lambda a: _sim.asarray(np.ascontiguousarray(a))
            self.get = lambda a: np.array(a, copy=True)
        self.k = K.Kernels(self.launcher)


@pytest.fixture(scope="module", params=[pytest.param(False, id="sim"), pytest.param(True, id="device", marks=pytest.mark.gpu)])
def env(request):
    if request.param:
        pytest.importorskip("cupy")
        from gpubpe.backends import cuda_available

        if not cuda_available():
            pytest.skip("no CUDA device")
    return Env(request.param)


# --- a word state: linked live symbols with removed slots in between --------


def layout(words, counts, rng, dead_rate=0.3):
    """Positions for ``words`` (lists of ids) with removed slots (-1) scattered
    between and inside them; returns sym, nxt, prv, wrd as int32 arrays."""
    sym, wrd, live_pos = [], [], []
    for w, word in enumerate(words):
        pos = []
        for s in word:
            while rng.random() < dead_rate:
                sym.append(-1)
                wrd.append(w)
            pos.append(len(sym))
            sym.append(s)
            wrd.append(w)
        live_pos.append(pos)
    n = len(sym)
    nxt = np.full(n, -1, np.int32)
    prv = np.full(n, -1, np.int32)
    for pos in live_pos:
        for x, y in zip(pos, pos[1:]):
            nxt[x] = y
            prv[y] = x
    return np.array(sym, np.int32), nxt, prv, np.array(wrd, np.int32), live_pos


def words_of(sym, nxt, prv):
    """The live sequences, each from its first symbol (order of first position)."""
    out = []
    for q in range(len(sym)):
        if sym[q] >= 0 and prv[q] < 0:
            seq, r = [], q
            while r >= 0:
                seq.append(int(sym[r]))
                r = nxt[r]
            out.append(seq)
    return out


def pair_counts(sym, nxt, wrd, counts):
    c = {}
    for q in range(len(sym)):
        if sym[q] >= 0 and nxt[q] >= 0:
            key = (int(sym[q]) << 32) | int(sym[nxt[q]])
            c[key] = c.get(key, 0) + int(counts[wrd[q]])
    return c


def table_dict(env, keys, cnt, drop_zero=False):
    k, c = env.get(keys), env.get(cnt)
    return {int(a): int(b) for a, b in zip(k, c) if int(a) != EMPTY and not (drop_zero and b == 0)}


def new_table(env, bits):
    return env.put(np.full(1 << bits, K.EMPTY_KEY, np.uint64)), env.put(np.zeros(1 << bits, np.int64))


def status(**fields):
    s = np.zeros(K.ST_SIZE, np.int64)
    s[K.ST_PENDING] = -1
    for name, v in fields.items():
        s[getattr(K, "ST_" + name)] = v
    return s


word_lists = st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=12), min_size=1, max_size=10)
geometry = st.sampled_from([(1, 1), (1, 32), (3, 8), (2, 256)])


# --- the contract between Python and the .cu files -----------------------------


def test_status_layout_matches_common_cuh():
    src = (K.kernel_dir() / "common.cuh").read_text()
    defined = dict(re.findall(r"#define ((?:ST|HALT)_\w+) (\d+)", src))
    assert defined, "no ST_/HALT_ defines found"
    for name, value in defined.items():
        assert getattr(K, name) == int(value), name
    assert int(re.search(r"#define MAX_BLOCK (\d+)", src).group(1)) == K.MAX_BLOCK


def test_every_kernel_has_a_wrapper():
    wrappers = {n for n in dir(K.Kernels) if not n.startswith("_")} - {"grid_over"}
    assert set(K.signatures()) == wrappers


def test_wrappers_check_types(env):
    k = env.k
    n = 8
    ok = dict(sym=env.put(np.zeros(n, np.int32)), nxt=env.put(np.full(n, -1, np.int32)),
              wrd=env.put(np.zeros(n, np.int32)), counts=env.put(np.ones(1, np.int64)), n=n,
              keys=env.put(np.full(1024, K.EMPTY_KEY, np.uint64)), cnt=env.put(np.zeros(1024, np.int64)),
              bits=10, used_limit=768, st=env.put(status()))
    k.count_pairs(grid=1, block=32, **ok)
    with pytest.raises(TypeError, match="counts must be int64"):
        k.count_pairs(grid=1, block=32, **{**ok, "counts": env.put(np.ones(1, np.int32))})
    with pytest.raises(ValueError, match="C-contiguous"):
        k.count_pairs(grid=1, block=32, **{**ok, "sym": env.put(np.zeros(2 * n, np.int32))[::2]})
    with pytest.raises(OverflowError, match="bits"):
        k.count_pairs(grid=1, block=32, **{**ok, "bits": 2**40})
    with pytest.raises(TypeError, match="integer"):
        k.count_pairs(grid=1, block=32, **{**ok, "n": 8.0})
    with pytest.raises(TypeError, match="device array"):
        k.count_pairs(grid=1, block=32, **{**ok, "sym": np.zeros(n, np.int32)})
    with pytest.raises(ValueError, match="power of two"):
        k.count_pairs(grid=1, block=48, **ok)


# --- pair_table.cu ---------------------------------------------------------------


@settings(max_examples=max_examples(40), deadline=None)
@given(words=word_lists, seed=st.integers(0, 2**32), geo=geometry, bits=st.integers(4, 9))
def test_count_pairs(env, words, seed, geo, bits):
    rng = random.Random(seed)
    counts = np.array([rng.choice([1, 2, 3, 2**40]) for _ in words], np.int64)  # 2**40: 64-bit sums
    sym, nxt, prv, wrd, _ = layout(words, counts, rng)
    expect = pair_counts(sym, nxt, wrd, counts)
    keys, cnt = new_table(env, bits)
    s = env.put(status())
    if len(sym) == 0:
        return
    env.k.count_pairs(grid=geo[0], block=geo[1], sym=env.put(sym), nxt=env.put(nxt), wrd=env.put(wrd),
                      counts=env.put(counts), n=len(sym), keys=keys, cnt=cnt, bits=bits,
                      used_limit=(1 << bits) * 3 // 4, st=s)
    stt = env.get(s)
    if len(expect) <= (1 << bits) * 3 // 4:
        assert stt[K.ST_HALT] == 0
        assert table_dict(env, keys, cnt) == expect
        assert stt[K.ST_USED] == len(expect)
    else:  # past the load limit the loop halts for a rebuild
        assert stt[K.ST_HALT] == K.HALT_TABLE


# --- argmax.cu --------------------------------------------------------------------


def token_bytes_state(rng, ntok):
    """Token byte strings built to tie: shared prefixes, equal strings, prefixes."""
    toks = [bytes([i]) for i in range(256)]
    pool = [b"a", b"ab", b"abc", b"b", b"ab", b"\xff", b"\xff\x00", b"a\x00"]
    while len(toks) < ntok:
        toks.append(rng.choice(pool) + (rng.choice(pool) if rng.random() < 0.5 else b""))
    return toks


def put_tokens(env, toks, cap_extra=64):
    tb = b"".join(toks)
    toff = np.zeros(len(toks) + 8, np.int64)
    tlen = np.zeros(len(toks) + 8, np.int32)
    o = 0
    for i, t in enumerate(toks):
        toff[i], tlen[i] = o, len(t)
        o += len(t)
    buf = np.frombuffer(tb + bytes(cap_extra), np.uint8).copy()
    return env.put(buf), env.put(toff), env.put(tlen), o, len(buf)


@settings(max_examples=max_examples(40), deadline=None)
@given(seed=st.integers(0, 2**32), npairs=st.integers(0, 60), bits=st.integers(7, 10),
       geo=st.sampled_from([(1, 1), (1, 32), (4, 32), (3, 256)]), max_len=st.sampled_from([0, 0, 2, 3, 4, 6]))
def test_argmax(env, seed, npairs, bits, geo, max_len):
    rng = random.Random(seed)
    m = 7  # the merge being made: it creates token 256 + 7, so pairs use only the ids before it
    ntok = 256 + m
    toks = token_bytes_state(rng, ntok)
    table = {}
    for _ in range(npairs):
        key = (rng.randrange(ntok) << 32) | rng.randrange(ntok)
        table[key] = rng.choice([0, -0, 5, 5, 5, 7, 2**40])  # many ties; zero counts never win
    keys = np.full(1 << bits, K.EMPTY_KEY, np.uint64)
    cnt = np.zeros(1 << bits, np.int64)
    slots = rng.sample(range(1 << bits), len(table))
    for s, (key, c) in zip(slots, table.items()):
        keys[s], cnt[s] = key, c
    tb, toff, tlen, used, cap = put_tokens(env, toks)  # token 256 + m's slot is free
    nparts = geo[0]
    part = env.put(np.full(nparts, -1, np.int64))
    merges = env.put(np.full(2 * (m + 1), -1, np.int32))
    list_start = env.put(np.zeros(ntok + 8, np.int64))
    list_len = env.put(np.zeros(ntok + 8, np.int64))
    s = env.put(status(DONE=m, TOKBYTES=used, NOCC=3, POOL_USED=10, PENDING=256 + m - 1, DEAD=4))
    dk, dc = env.put(keys), env.put(cnt)
    env.k.argmax_partial(grid=nparts, block=geo[1], keys=dk, cnt=dc, bits=bits, tb=tb, toff=toff, tlen=tlen,
                         max_len=max_len, part=part, st=s)
    env.k.argmax_final(block=geo[1], keys=dk, cnt=dc, tb=tb, toff=toff, tlen=tlen, tb_cap=cap, part=part,
                       nparts=nparts, merges=merges, list_start=list_start, list_len=list_len, st=s)
    stt = env.get(s)
    live = [(c, toks[k >> 32], toks[k & 0xFFFFFFFF], k) for k, c in table.items()
            if c > 0 and (max_len == 0 or len(toks[k >> 32]) + len(toks[k & 0xFFFFFFFF]) <= max_len)]
    if not live:
        assert stt[K.ST_HALT] == K.HALT_NO_PAIR and stt[K.ST_DONE] == m
        return
    best = max(live)[3]
    a, b = best >> 32, best & 0xFFFFFFFF
    assert stt[K.ST_HALT] == 0
    assert env.get(merges)[2 * m : 2 * m + 2].tolist() == [a, b]
    assert (stt[K.ST_A], stt[K.ST_B], stt[K.ST_DONE]) == (a, b, m + 1)
    t = 256 + m
    o, n = int(env.get(toff)[t]), int(env.get(tlen)[t])
    assert (o, n) == (used, len(toks[a]) + len(toks[b]))
    assert env.get(tb)[o : o + n].tobytes() == toks[a] + toks[b]
    assert stt[K.ST_TOKBYTES] == used + n
    assert env.get(list_len)[t - 1] == 3  # the previous merge's occurrence count
    assert stt[K.ST_POOL_USED] == 13 and stt[K.ST_OCC_START] == 13 and env.get(list_start)[t] == 13
    assert stt[K.ST_NOCC] == 0 and stt[K.ST_DEAD] == 7 and stt[K.ST_PENDING] == t


def test_argmax_full_token_buffer_halts_without_change(env):
    toks = [bytes([i]) for i in range(256)] + [b"x" * 40]
    tb, toff, tlen, used, cap = put_tokens(env, toks, cap_extra=10)
    keys, cnt = np.full(1024, K.EMPTY_KEY, np.uint64), np.zeros(1024, np.int64)
    keys[5], cnt[5] = (256 << 32) | 256, 9  # would need 80 bytes
    dk, dc = env.put(keys), env.put(cnt)
    part = env.put(np.full(2, -1, np.int64))
    merges = env.put(np.full(4, -1, np.int32))
    ls, ll = env.put(np.zeros(300, np.int64)), env.put(np.zeros(300, np.int64))
    s = env.put(status(DONE=1, TOKBYTES=used))
    env.k.argmax_partial(grid=2, block=32, keys=dk, cnt=dc, bits=10, tb=tb, toff=toff, tlen=tlen, part=part, st=s)
    env.k.argmax_final(block=32, keys=dk, cnt=dc, tb=tb, toff=toff, tlen=tlen, tb_cap=cap, part=part, nparts=2,
                       merges=merges, list_start=ls, list_len=ll, st=s)
    stt = env.get(s)
    assert stt[K.ST_HALT] == K.HALT_TOKBUF and stt[K.ST_DONE] == 1 and stt[K.ST_TOKBYTES] == used
    assert env.get(merges).tolist() == [-1] * 4


# --- merge.cu ---------------------------------------------------------------------


def reference_occurrences(sym, nxt, prv, a, b):
    """Occurrence starts, left to right and non-overlapping, per live sequence."""
    occ = set()
    for q in range(len(sym)):
        if sym[q] >= 0 and prv[q] < 0:
            r = q
            while r >= 0 and nxt[r] >= 0:
                if sym[r] == a and sym[nxt[r]] == b:
                    occ.add(r)
                    r = nxt[nxt[r]]
                else:
                    r = nxt[r]
    return occ


def reference_merge(words, a, b, t):
    out = []
    for w in words:
        o, i = [], 0
        while i < len(w):
            if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                o.append(t)
                i += 2
            else:
                o.append(w[i])
                i += 1
        out.append(o)
    return out


adversarial_words = st.one_of(
    word_lists,
    st.lists(st.lists(st.just(1), min_size=0, max_size=40), min_size=1, max_size=4),  # runs of one symbol
    st.lists(st.lists(st.sampled_from([1, 2]), min_size=0, max_size=30), min_size=1, max_size=6),
)


@settings(max_examples=max_examples(60), deadline=None)
@given(words=adversarial_words, seed=st.integers(0, 2**32), geo=geometry, same=st.booleans())
def test_merge_kernels(env, words, seed, geo, same):
    """mark, remove, apply, add, each checked against the reference after its launch."""
    rng = random.Random(seed)
    a, b = (1, 1) if same else (1, 2)
    m = 3
    t = 256 + m
    counts = np.array([rng.choice([1, 3, 2**33]) for _ in words], np.int64)
    sym, nxt, prv, wrd, _ = layout(words, counts, rng)
    if len(sym) == 0:
        return
    n = len(sym)
    # list(a): every position holding a, plus stale entries (other symbols), shuffled
    lst = [q for q in range(n) if sym[q] == a] + [q for q in range(n) if sym[q] not in (a,) and rng.random() < 0.3]
    rng.shuffle(lst)
    pool_cap = len(lst) + n + 4
    pool = np.full(pool_cap, -7, np.int32)
    pool[: len(lst)] = lst
    list_start = np.zeros(300, np.int64)
    list_len = np.zeros(300, np.int64)
    list_len[a] = len(lst)
    bits = 9
    keys, cnt = new_table(env, bits)
    before = pair_counts(sym, nxt, wrd, counts)
    d = {k_: env.put(v) for k_, v in dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=counts, pool=pool,
                                           list_start=list_start, list_len=list_len,
                                           mk=np.full(n, -1, np.int32)).items()}
    s = env.put(status(DONE=m + 1, A=a, B=b, OCC_START=len(lst), POOL_USED=len(lst)))
    g, blk = geo
    env.k.count_pairs(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], wrd=d["wrd"], counts=d["counts"], n=n,
                      keys=keys, cnt=cnt, bits=bits, used_limit=1 << bits, st=s)
    assert table_dict(env, keys, cnt) == before

    env.k.mark_occurrences(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], mk=d["mk"], pool=d["pool"],
                           list_start=d["list_start"], list_len=d["list_len"], pool_cap=pool_cap, st=s)
    stt = env.get(s)
    occ = reference_occurrences(sym, nxt, prv, a, b)
    nocc = int(stt[K.ST_NOCC])
    assert nocc == len(occ)
    got = env.get(d["pool"])[len(lst) : len(lst) + nocc]
    assert sorted(got.tolist()) == sorted(occ)
    mk = env.get(d["mk"])
    assert {q for q in range(n) if mk[q] == m} == occ

    old_words = words_of(sym, nxt, prv)
    env.k.remove_old_pairs(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], mk=d["mk"], wrd=d["wrd"],
                           counts=d["counts"], pool=d["pool"], keys=keys, cnt=cnt, bits=bits, st=s)
    # removed: every pair position touching an occurrence (its left or right symbol)
    touched = occ | {int(nxt[q]) for q in occ}
    expect = dict(before)
    for q in range(n):
        if sym[q] >= 0 and nxt[q] >= 0 and (q in touched or int(nxt[q]) in touched):
            key = (int(sym[q]) << 32) | int(sym[nxt[q]])
            expect[key] -= int(counts[wrd[q]])
    assert table_dict(env, keys, cnt) == expect

    env.k.apply_merges(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], pool=d["pool"], st=s)
    s2, n2, p2 = env.get(d["sym"]), env.get(d["nxt"]), env.get(d["prv"])
    assert words_of(s2, n2, p2) == [w for w in reference_merge(old_words, a, b, t) if w]
    assert all(s2[int(nxt[q])] == -1 for q in occ)

    env.k.add_new_pairs(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], mk=d["mk"], wrd=d["wrd"],
                        counts=d["counts"], pool=d["pool"], keys=keys, cnt=cnt, bits=bits, used_limit=1 << bits,
                        st=s)
    assert env.get(s)[K.ST_HALT] == 0
    after = pair_counts(s2, n2, wrd, counts)
    got = table_dict(env, keys, cnt, drop_zero=True)
    assert got == {k_: v for k_, v in after.items() if v}


def test_merge_kernels_are_noops_when_halted(env):
    words = [[1, 2, 1, 2]]
    rng = random.Random(0)
    sym, nxt, prv, wrd, _ = layout(words, [1], rng, dead_rate=0)
    d = {k_: env.put(v) for k_, v in dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=np.ones(1, np.int64),
                                           pool=np.array([0, 2, 0, 0, 0, 0], np.int32),
                                           list_start=np.zeros(300, np.int64), mk=np.full(4, -1, np.int32),
                                           list_len=np.full(300, 2, np.int64)).items()}
    s = env.put(status(DONE=1, A=1, B=2, OCC_START=2, POOL_USED=2, HALT=K.HALT_TABLE))
    env.k.mark_occurrences(grid=1, block=32, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], mk=d["mk"], pool=d["pool"],
                           list_start=d["list_start"], list_len=d["list_len"], pool_cap=6, st=s)
    env.k.apply_merges(grid=1, block=32, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], pool=d["pool"], st=s)
    assert env.get(s)[K.ST_NOCC] == 0
    assert env.get(d["sym"]).tolist() == sym.tolist()


# --- compact.cu --------------------------------------------------------------------


@settings(max_examples=max_examples(40), deadline=None)
@given(words=word_lists, seed=st.integers(0, 2**32), geo=geometry)
def test_compact(env, words, seed, geo):
    rng = random.Random(seed)
    counts = np.array([rng.randint(1, 9) for _ in words], np.int64)
    sym, nxt, prv, wrd, live_pos = layout(words, counts, rng, dead_rate=0.5)
    n = len(sym)
    if n == 0:
        return
    d = {k_: env.put(v) for k_, v in dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=counts).items()}
    keep = env.put(np.full(n, 7, np.int32))
    s = env.put(status())
    g, blk = geo
    env.k.compact_mark(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], wrd=d["wrd"],
                       counts=d["counts"], n=n, keep=keep, st=s)
    kp = env.get(keep)
    assert kp.tolist() == [int(sym[q] >= 0 and (nxt[q] >= 0 or prv[q] >= 0)) for q in range(n)]
    assert env.get(s)[K.ST_DROPPED] == sum(int(counts[w]) for w, p in enumerate(live_pos) if len(p) == 1)
    newpos = np.cumsum(kp, dtype=np.int64) - kp
    n2 = int(kp.sum())
    outs = [env.put(np.full(max(n2, 1), -9, np.int32)) for _ in range(4)]
    env.k.compact_scatter(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], wrd=d["wrd"], keep=keep,
                          newpos=env.put(newpos), n=n, out_sym=outs[0], out_nxt=outs[1], out_prv=outs[2],
                          out_wrd=outs[3])
    o_sym, o_nxt, o_prv, o_wrd = (env.get(x)[:n2] for x in outs)
    assert words_of(o_sym, o_nxt, o_prv) == [w for w in words if len(w) >= 2]
    assert (o_sym >= 0).all()
    assert o_wrd.tolist() == [int(wrd[q]) for q in range(n) if kp[q]]


# --- the simulator itself -----------------------------------------------------------

HARNESS_KERNELS = r"""
#include "common.cuh"
extern "C" __global__ void last_writer(int* out) { out[0] = (int)(blockIdx.x * blockDim.x + threadIdx.x); }
extern "C" __global__ void block_sum(const long long* x, long long n, long long* out) {
    __shared__ long long s[MAX_BLOCK];
    long long acc = 0;
    for (long long i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) acc += x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned h = blockDim.x / 2; h > 0; h /= 2) {
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd((unsigned long long*)out, (unsigned long long)s[0]);
}
extern "C" __global__ void read_past(const int* x, long long n, int* out) { out[0] = x[n]; }
extern "C" __global__ void divergent(int* out) { if (threadIdx.x == 0) return; __syncthreads(); out[0] = 1; }
"""


@pytest.fixture(scope="module")
def harness_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("kernels")
    (d / "common.cuh").write_text((K.kernel_dir() / "common.cuh").read_text())
    (d / "harness_test.cu").write_text(HARNESS_KERNELS)
    return d


def run_sim_script(harness_dir, body: str, seed: int = 1):
    """Run ``body`` in a fresh interpreter whose simulator builds from harness_dir."""
    code = textwrap.dedent(
        """
        import numpy as np
        from gpubpe.backends.cuda import sim as _sim
        from gpubpe.backends.cuda import kernels as K
        sigs = K.signatures()
        lib = _sim.library()
        def launch(name, grid, block, *args):
            _sim.launch(lib, sigs[name], grid, block, list(args))
        """
    ) + textwrap.dedent(body)
    env = {"GPUBPE_KERNEL_DIR": str(harness_dir), "GPUBPE_SIM_SEED": str(seed), "PATH": "/usr/bin:/bin",
           "HOME": str(harness_dir)}
    import os

    env = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_sim_shuffles_thread_and_block_order(harness_dir):
    r = run_sim_script(harness_dir, """
        seen = set()
        out = _sim.asarray(np.zeros(1, np.int32))
        for _ in range(20):
            launch("last_writer", 4, 32, out)
            seen.add(int(out[0]))
        print(len(seen))
        """)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) > 1  # with a fixed order the last writer would never change


def test_sim_syncthreads_reduction(harness_dir):
    r = run_sim_script(harness_dir, """
        x = _sim.asarray(np.arange(1000, dtype=np.int64))
        out = _sim.asarray(np.zeros(1, np.int64))
        launch("block_sum", 3, 64, x, np.int64(1000), out)
        print(int(out[0]))
        """)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[-1]) == sum(range(1000))


def test_sim_asan_reports_out_of_bounds(harness_dir):
    from gpubpe.backends.cuda import sim as _sim

    if not _sim.asan_enabled():
        pytest.skip("the simulator was built without AddressSanitizer (no libasan for this compiler)")
    r = run_sim_script(harness_dir, """
        x = _sim.asarray(np.zeros(10, np.int32))
        out = _sim.asarray(np.zeros(1, np.int32))
        launch("read_past", 1, 1, x, np.int64(9), out)
        print("in bounds ok", flush=True)
        launch("read_past", 1, 1, x, np.int64(10), out)
        print("not reached")
        """)
    assert "in bounds ok" in r.stdout
    assert r.returncode != 0 and "AddressSanitizer" in r.stderr and "read_past" in r.stderr
    assert "not reached" not in r.stdout


def test_sim_reports_divergent_barrier(harness_dir):
    r = run_sim_script(harness_dir, """
        out = _sim.asarray(np.zeros(1, np.int32))
        launch("divergent", 1, 4, out)
        """)
    assert r.returncode != 0 and "__syncthreads" in r.stderr


def test_barrier_detection_follows_device_functions():
    """A kernel that reaches __syncthreads only through a __device__ helper
    still runs its threads as fibers in the simulator (else the barrier aborts)."""
    from gpubpe.backends.cuda.catalogue import parse_kernels

    header = "__device__ void reduce_in_block(long long* s) { __syncthreads(); }\n"
    src = (
        "__device__ int plain(int x) { return x + 1; }\n"
        "__device__ void outer(long long* s) { reduce_in_block(s); }\n"
        'extern "C" __global__ void k_helper(long long* a) { outer(a); }\n'
        'extern "C" __global__ void k_plain(long long* a) { a[0] = plain(1); }\n'
        'extern "C" __global__ void k_direct(long long* a) { __syncthreads(); }\n'
    )
    sigs = {s.name: s.uses_barrier for s in parse_kernels(src, "t.cu", header)}
    assert sigs == {"k_helper": True, "k_plain": False, "k_direct": True}
