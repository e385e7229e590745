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
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ._helpers import max_examples
import gpubpe
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
    for name, v in fields.items():
        s[getattr(K, "ST_" + name)] = v
    return s


word_lists = st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=12), min_size=1, max_size=10)
geometry = st.sampled_from([(1, 1), (1, 32), (3, 8), (2, 256)])


# --- the contract between Python and the .cu files -----------------------------


def test_status_layout_matches_common_cuh():
    src = (K.kernel_dir() / "common.cuh").read_text()
    defined = dict(re.findall(r"#define ((?:ST|HALT|SEL)_\w+) (\d+)", src))
    assert defined, "no ST_/HALT_ defines found"
    for name, value in defined.items():
        assert getattr(K, name) == int(value), name
    assert int(re.search(r"#define MAX_BLOCK (\d+)", src).group(1)) == K.MAX_BLOCK
    for name in ("SELECT_LOCAL", "SELECT_UNROLL", "DECIDE_MAX", "RUN_UNROLL", "LRUN_FIELDS"):
        assert int(re.search(rf"#define {name} (\d+)", src).group(1)) == getattr(K, name), name


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


# --- links.cu ---------------------------------------------------------------------


@settings(max_examples=max_examples(30), deadline=None)
@given(words=st.lists(st.binary(min_size=0, max_size=9), min_size=1, max_size=12), geo=geometry)
def test_build_links(env, words, geo):
    data = b"".join(words)
    if not data:
        return
    off = np.cumsum([0] + [len(w) for w in words]).astype(np.int64)
    n = len(data)
    out = [env.put(np.full(n, -9, np.int32)) for _ in range(4)]
    env.k.build_links(grid=geo[0], block=geo[1], bytes_=env.put(np.frombuffer(data, np.uint8)), off=env.put(off),
                      nwords=len(words), n=n, sym=out[0], nxt=out[1], prv=out[2], wrd=out[3])
    sym, nxt, prv, wrd = (env.get(x) for x in out)
    assert sym.tolist() == list(data)
    assert words_of(sym, nxt, prv) == [list(w) for w in words if w]
    assert wrd.tolist() == [i for i, w in enumerate(words) for _ in w]


# --- step.cu: one whole step against gpubpe.backends.steps -------------------------

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


KMAX = 16


def py_rank(toks, ties="cs336"):
    """The order on (count, key) of tie rule ``ties``, as kernels/common.cuh ranks:
    CS336 with token bytes, else the smaller (rank(left), rank(right)) ranks above."""
    if ties == "cs336":
        return lambda ck: (ck[0], toks[ck[1] >> 32], toks[ck[1] & 0xFFFFFFFF], ck[1])
    rank = gpubpe.ties.byte_rank(ties)

    def r(t):
        return int(rank[t]) if t < 256 else t

    return lambda ck: (ck[0], -r(ck[1] >> 32), -r(ck[1] & 0xFFFFFFFF))


def no_ties_options(env):
    """step_select's tie-rule and replay arguments for the CS336 rule, nothing replayed."""
    return dict(rank=env.put(np.zeros(256, np.int64)), id_order=0, forced=env.put(np.zeros(2, np.int32)), nforced=0)


@settings(max_examples=max_examples(40), deadline=None)
@given(seed=st.integers(0, 2**32), npairs=st.integers(0, 80), bits=st.integers(7, 9),
       block=st.sampled_from([1, 4, 32, 256]), max_len=st.sampled_from([0, 0, 2, 3, 4]),
       want=st.sampled_from([1, 3, 16]), ties=st.sampled_from(["cs336", "hf", "rustbpe"]))
def test_step_select(env, seed, npairs, bits, block, max_len, want, ties):
    """The selected prefix is the true ranking of the eligible pairs at or above
    the threshold, as long as the kernel can prove, and at least one entry."""
    rng = random.Random(seed)
    ntok = 256 + 7
    toks = token_bytes_state(rng, ntok)
    table = {}
    for _ in range(npairs):
        table[(rng.randrange(ntok) << 32) | rng.randrange(ntok)] = rng.choice([0, 2, 5, 5, 5, 7, 7, 2**40])
    keys = np.full(1 << bits, K.EMPTY_KEY, np.uint64)
    cnt = np.zeros(1 << bits, np.int64)
    slots = rng.sample(range(1 << bits), len(table))
    for s_, (key, c) in zip(slots, table.items()):
        keys[s_], cnt[s_] = key, c
    thresh = rng.choice([1, 5, 6])
    cand = [s_ for s_ in slots if rng.random() < 0.9 or cnt[s_] < thresh]  # the invariant: all >= thresh present
    cand += [s_ for s_ in slots if cnt[s_] >= thresh and s_ not in cand]
    rng.shuffle(cand)
    tb, toff, tlen, _, _ = put_tokens(env, toks)
    lstart = np.arange(ntok + 8, dtype=np.int64) * 3
    llen = np.array([rng.randrange(5) for _ in range(ntok + 8)], np.int64)
    kmax = min(KMAX, block * K.SELECT_LOCAL)
    sel = env.put(np.zeros(K.SEL_FIELDS * kmax, np.int64))
    s = env.put(status(THRESH=thresh, NCAND=len(cand), WANT=want, LIMIT=100, DONE=7, NSEL=5, MKBASE=10,
                       SUSED=9, OCC=4))
    rank = gpubpe.ties.byte_rank(ties)
    env.k.step_select(block=block, keys=env.put(keys), cnt=env.put(cnt), bits=bits, tb=tb, toff=toff, tlen=tlen,
                      rank=env.put(rank if len(rank) else np.zeros(256, np.int64)), id_order=int(len(rank) > 0),
                      forced=env.put(np.zeros(2, np.int32)), nforced=0, max_len=max_len, cand=env.put(np.array(cand + [0], np.int64)), list_start=env.put(lstart),
                      list_len=env.put(llen), sel=sel, kmax=kmax, st=s)
    stt = env.get(s)
    elig = sorted([(int(cnt[s_]), int(keys[s_])) for s_ in slots if cnt[s_] >= thresh and cnt[s_] > 0
                   and (max_len == 0 or len(toks[keys[s_] >> 32]) + len(toks[keys[s_] & 0xFFFFFFFF]) <= max_len)],
                  key=py_rank(toks, ties), reverse=True)
    if not elig:
        assert stt[K.ST_HALT] == K.HALT_REFILL
        return
    n = int(stt[K.ST_NSEL])
    assert stt[K.ST_HALT] == 0 and 1 <= n <= min(want, kmax)
    assert n >= min(want, kmax, K.SELECT_LOCAL, len(elig))  # one thread's own entries are always provable
    got = env.get(sel).reshape(K.SEL_FIELDS, kmax)
    assert [(int(c), int(k_) & (2**64 - 1)) for c, k_ in zip(got[K.SEL_CNT, :n], got[K.SEL_KEY, :n])] == elig[:n]
    assert all(int(keys[got[K.SEL_SLOT, i]]) == int(got[K.SEL_KEY, i]) & (2**64 - 1) for i in range(n))
    lefts = [int(got[K.SEL_KEY, i]) >> 32 for i in range(n)]
    assert got[K.SEL_LSTART, :n].tolist() == [int(lstart[a]) for a in lefts]
    assert got[K.SEL_PRE, :n].tolist() == np.concatenate([[0], np.cumsum([llen[a] for a in lefts])[:-1]]).tolist()
    assert stt[K.ST_LISTS] == sum(int(llen[a]) for a in lefts)
    assert (stt[K.ST_MKBASE], stt[K.ST_SUSED], stt[K.ST_OCC], stt[K.ST_NACC]) == (15, 0, 0, 0)


def test_step_select_halts_on_flags(env):
    keys, cnt = new_table(env, 4)
    tb, toff, tlen, _, _ = put_tokens(env, [bytes([i]) for i in range(256)])
    sel = env.put(np.zeros(K.SEL_FIELDS * 4, np.int64))
    z = env.put(np.zeros(300, np.int64))
    for fields, code in [(dict(TFULL=1), K.HALT_TABLE), (dict(CFULL=1), K.HALT_CAND),
                         (dict(DONE=5, LIMIT=5), K.HALT_LIMIT)]:
        s = env.put(status(**{"LIMIT": 9, **fields}))
        env.k.step_select(block=32, keys=keys, cnt=cnt, bits=4, tb=tb, toff=toff, tlen=tlen, max_len=0,
                          **no_ties_options(env),
                          cand=env.put(np.zeros(1, np.int64)), list_start=z, list_len=z, sel=sel, kmax=4, st=s)
        assert env.get(s)[K.ST_HALT] == code


step_words = st.one_of(
    st.lists(st.lists(st.integers(0, 5), min_size=0, max_size=12), min_size=1, max_size=10),
    st.lists(st.lists(st.sampled_from([1, 1, 2]), min_size=0, max_size=30), min_size=1, max_size=5),  # runs
    # units of disjoint pairs side by side: x a b c d y and a a b b, to put occurrences
    # of different merges of one step next to each other
    st.lists(st.lists(st.sampled_from([(0, 1), (2, 3), (4, 4), (5, 5), (6,), (1, 2)]), min_size=1, max_size=8)
             .map(lambda us: [x for u in us for x in u]), min_size=1, max_size=8),
)


@settings(max_examples=max_examples(60), deadline=None)
@given(words=step_words, seed=st.integers(0, 2**32), geo=geometry, tok_room=st.sampled_from([64, 2, 1]),
       run_walk=st.sampled_from([0, 2, 1000]), lruns=st.sampled_from([1, 2, 64]))
def test_one_step(env, words, seed, geo, tok_room, run_walk, lruns):
    """select, then the step's two launches (find + decide, merge + the next
    selection) on a word state with removed slots: the merges accepted are
    those of gpubpe.backends.steps from the same state, the words are merged,
    the table holds the new pair counts, the new pairs at or above the
    threshold joined the candidate set, the scratch is clean, and the next
    step's candidates are the true ranking of the new counts. run_walk 0 or 2
    hands every run (longer than 2) to step_find's last block; lruns 1 or 2
    records leave the other runs to be walked."""
    from gpubpe.backends import steps

    rng = random.Random(seed)
    spread = rng.random() < 0.7  # distinct weights make steps of several merges likely
    counts = np.array([rng.randint(1, 60) if spread else rng.choice([1, 2, 3, 2**33]) for _ in words], np.int64)
    sym, nxt, prv, wrd, _ = layout(words, counts, rng)
    n = len(sym)
    if n == 0:
        return
    g, blk = geo
    done = 5  # merges before this step: tokens 256..260 exist (unused by the words)
    toks = [bytes([i]) for i in range(256)] + [b"q" * (i + 2) for i in range(done)]
    ntok = 256 + done + KMAX + 1
    # the pool: per token its positions, plus stale entries
    order = sorted(range(n), key=lambda q: (sym[q], rng.random()))
    pool = np.full(2 * n + 16, -7, np.int32)
    lst = [q for q in order if sym[q] >= 0]
    pool[: len(lst)] = lst
    list_start = np.zeros(ntok, np.int64)
    list_len = np.zeros(ntok, np.int64)
    for x in set(sym.tolist()) - {-1}:
        where = [i for i, q in enumerate(lst) if sym[q] == x]
        list_start[x], list_len[x] = where[0], len(where)
    bits = 9
    d = {k_: env.put(v) for k_, v in dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=counts, pool=pool,
                                           list_start=list_start, list_len=list_len,
                                           mk=np.full(n, -1, np.int32), mkr=np.full(n, -1, np.int32),
                                           occ=np.full(n, -3, np.int32)).items()}
    keys, cnt = new_table(env, bits)
    thresh = rng.choice([1, 2, 3])
    s = env.put(status(TOKBYTES=sum(map(len, toks)), LIMIT=done + rng.choice([1, 3, 100]), DONE=done,
                       WANT=rng.choice([2, KMAX, KMAX]), THRESH=thresh, POOL_USED=len(lst), MKBASE=rng.randrange(50)))
    env.k.count_pairs(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], wrd=d["wrd"], counts=d["counts"], n=n,
                      keys=keys, cnt=cnt, bits=bits, used_limit=1 << bits, st=s)
    before = pair_counts(sym, nxt, wrd, counts)
    kt = env.get(keys)
    cand_host = [i for i in range(1 << bits) if int(kt[i]) != EMPTY and before[int(kt[i])] >= thresh]
    cand = env.put(np.array(cand_host + [0] * 64, np.int64))
    stt = env.get(s)
    stt[K.ST_NCAND] = len(cand_host)
    s = env.put(stt)
    tb, toff, tlen, _, _ = put_tokens(env, toks, cap_extra=tok_room)
    kmax = min(KMAX, blk * K.SELECT_LOCAL)
    sel = env.put(np.zeros(K.SEL_FIELDS * kmax, np.int64))
    merges = env.put(np.full(2 * (done + KMAX + 1), -1, np.int32))
    skeys, scnt = new_table(env, 8)
    sused = env.put(np.full(128, -5, np.int64))
    newslots = env.put(np.full(1 << bits, -5, np.int64))
    lrun = env.put(np.full(K.LRUN_FIELDS * lruns, -9, np.int64))
    k = env.k
    ties = no_ties_options(env)
    k.step_select(block=blk, keys=keys, cnt=cnt, bits=bits, tb=tb, toff=toff, tlen=tlen, max_len=0, cand=cand,
                  **ties, list_start=d["list_start"], list_len=d["list_len"], sel=sel, kmax=kmax, st=s)
    if not before or max(before.values()) < thresh:
        assert env.get(s)[K.ST_HALT] == K.HALT_REFILL
        return
    mcount = env.put(np.full(done + KMAX + 1, -9, np.int64))
    k.step_find(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], wrd=d["wrd"], counts=d["counts"],
                mk=d["mk"], mkr=d["mkr"], pool=d["pool"], occ=d["occ"], sel=sel, kmax=kmax, skeys=skeys, scnt=scnt,
                sbits=8, sused=sused, lrun=lrun, run_walk=run_walk, tb=tb, toff=toff, tlen=tlen, merges=merges,
                mcount=mcount, min_count=0, nforced=0, list_start=d["list_start"], list_len=d["list_len"], st=s)
    stt = env.get(s)
    assert stt[K.ST_ARRIVED] == 0  # the last block reset the counter for the next launch
    if tok_room < 2:  # no room for even one token's bytes
        assert stt[K.ST_HALT] == K.HALT_TOKBUF
        return
    assert stt[K.ST_HALT] == 0
    nsel, nacc = int(stt[K.ST_NSEL]), int(stt[K.ST_NACC])
    event(f"merges in the step: {min(nacc, 3)}{'+' if nacc >= 3 else ''}")
    if stt[K.ST_NLONG]:
        event("a run scanned by the last block")
    # the same step by the pure rule, from the same state, the same candidates
    live_words = {}
    for q in range(n):  # weights per live sequence
        if sym[q] >= 0 and prv[q] < 0:
            seq, r = [], q
            while r >= 0:
                seq.append(int(sym[r]))
                r = nxt[r]
            live_words[tuple(seq)] = live_words.get(tuple(seq), 0) + int(counts[wrd[q]])
    ranked = sorted(((p, c) for p, c in steps.pair_counts(live_words).items() if c >= thresh),
                    key=lambda pc: (pc[1], pc[0]), reverse=True)[:nsel]
    limit = int(stt[K.ST_LIMIT]) - done
    expect = ranked[: min(limit, steps.accept_count(
        ranked, lambda i: max(steps.created_alone(live_words, ranked[i][0]).values(), default=0)))]
    if tok_room == 2:
        expect = expect[:1]
    got = env.get(merges)[2 * done: 2 * (done + nacc)].reshape(-1, 2).tolist()
    assert got == [list(p) for p, _ in expect]
    assert env.get(mcount)[done: done + nacc].tolist() == [c for _, c in expect]
    assert stt[K.ST_DONE] == done + nacc
    k.step_merge(grid=g, block=blk, sym=d["sym"], nxt=d["nxt"], prv=d["prv"], mk=d["mk"], mkr=d["mkr"], wrd=d["wrd"],
                 counts=d["counts"], occ=d["occ"], pool=d["pool"], sel=sel, kmax=kmax, keys=keys, cnt=cnt, bits=bits,
                 used_limit=1 << bits, newslots=newslots, skeys=skeys, scnt=scnt, sused=sused, tb=tb, toff=toff,
                 tlen=tlen, **ties, max_len=0, cand=cand, list_start=d["list_start"], list_len=d["list_len"], st=s)
    stt = env.get(s)
    assert stt[K.ST_TFULL] == 0 and stt[K.ST_ARRIVED] == 0
    # the words: each accepted merge applied in turn (token-disjoint: any order)
    new_words = {}
    for wd, c in live_words.items():
        for i, (p, _) in enumerate(expect):
            wd = steps.merge_word(wd, p, 256 + done + i)
        new_words[wd] = new_words.get(wd, 0) + c
    s2, n2, p2 = env.get(d["sym"]), env.get(d["nxt"]), env.get(d["prv"])
    merged = {}
    for q in range(n):
        if s2[q] >= 0 and p2[q] < 0:
            seq, r = [], q
            while r >= 0:
                seq.append(int(s2[r]))
                r = n2[r]
            merged[tuple(seq)] = merged.get(tuple(seq), 0) + int(counts[wrd[q]])
    assert merged == new_words
    after = pair_counts(s2, n2, wrd, counts)
    assert table_dict(env, keys, cnt, drop_zero=True) == {k_: v for k_, v in after.items() if v}
    # new pairs at or above the threshold are candidates now; the scratch is empty
    kt, ct = env.get(keys), env.get(cnt)
    in_cand = set(env.get(cand)[: int(stt[K.ST_NCAND])].tolist())
    for i in range(1 << bits):
        key = int(kt[i])
        if key != EMPTY and ((key >> 32) >= 256 + done or (key & 0xFFFFFFFF) >= 256 + done) and ct[i] >= thresh:
            assert i in in_cand
    assert (env.get(skeys) == K.EMPTY_KEY).all() and (env.get(scnt) == 0).all()
    # each new token's list holds exactly its positions, and its bytes are in place
    ls, ll, pl = env.get(d["list_start"]), env.get(d["list_len"]), env.get(d["pool"])
    to, tl, tbh = env.get(toff), env.get(tlen), env.get(tb)
    for i, (p, _) in enumerate(expect):
        t = 256 + done + i
        assert sorted(pl[ls[t]: ls[t] + ll[t]].tolist()) == sorted(q for q in range(n) if s2[q] == t)
        assert tbh[to[t]: to[t] + tl[t]].tobytes() == toks[p[0]] + toks[p[1]]
    # the next step's selection, made by step_merge's last block
    if stt[K.ST_DONE] >= stt[K.ST_LIMIT]:
        assert stt[K.ST_HALT] == K.HALT_LIMIT
        return
    toks2 = toks + [toks[p[0]] + toks[p[1]] for p, _ in expect]
    live = sorted([(v, k_) for k_, v in after.items() if v >= thresh], key=py_rank(toks2), reverse=True)
    if not live:
        assert stt[K.ST_HALT] == K.HALT_REFILL
        return
    assert stt[K.ST_HALT] == 0
    n_next = int(stt[K.ST_NSEL])
    assert 1 <= n_next <= min(2 * nacc + 2, kmax)
    nxt_sel = env.get(sel).reshape(K.SEL_FIELDS, kmax)
    assert [(int(c), int(k_) & (2**64 - 1)) for c, k_ in zip(nxt_sel[K.SEL_CNT, :n_next],
                                                              nxt_sel[K.SEL_KEY, :n_next])] == live[:n_next]
    assert stt[K.ST_MKBASE] == env.get(s)[K.ST_MKBASE] and stt[K.ST_OCC] == 0 and stt[K.ST_SUSED] == 0


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
