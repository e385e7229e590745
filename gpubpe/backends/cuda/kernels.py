"""One typed Python wrapper per CUDA kernel, and the launcher for a device.

The same wrappers drive two launchers:

* :class:`DeviceLauncher`: CuPy ``RawModule`` per ``kernels/*.cu`` file,
  compiled by NVRTC on first use (memoized per process).
* :class:`~gpubpe.backends.cuda.sim.SimLauncher`: the same sources compiled by
  the host C++ compiler and called through ctypes, on NumPy arrays the
  simulator allocated (poisoned redzones, so AddressSanitizer sees
  out-of-bounds access).

Every wrapper checks each array's dtype and contiguity and casts each scalar to
the exact C type of the kernel parameter: CuPy passes a Python ``int`` as a
64-bit value, which a kernel taking ``int`` would silently misread. The
expected types are read from the kernel signatures in the ``.cu`` files
(:mod:`.catalogue`), so a wrapper and its kernel cannot drift apart.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .catalogue import *  # noqa: F401,F403 (the status layout is part of the wrappers' API)
from .catalogue import _CTYPES, DECIDE_MAX, LRUN_FIELDS, MAX_BLOCK, PT_TILE, WC_SIZE, SEL_FIELDS, SELECT_LOCAL, NVRTC_STD, KernelSig, \
    device_source, kernel_dir, \
    signatures


class DeviceLauncher:
    """Launches on a CUDA device through CuPy; modules compile once per process."""

    sim = False

    def __init__(self):
        import cupy

        self.cp = cupy
        self._fns = {}
        dev = cupy.cuda.Device()
        self.sm_count = int(dev.attributes["MultiProcessorCount"])

    def _fn(self, sig: KernelSig):
        fn = self._fns.get(sig.name)
        if fn is None:
            mod = _device_module(str(kernel_dir() / sig.file))
            fn = self._fns[sig.name] = mod.get_function(sig.name)
        return fn

    def is_device_array(self, a) -> bool:
        return isinstance(a, self.cp.ndarray)

    def load_all(self) -> None:
        """Compile and load every kernel now: a module load must not happen
        inside a CUDA graph capture."""
        for sig in signatures().values():
            self._fn(sig)

    def launch(self, sig: KernelSig, grid: int, block: int, args: list) -> None:
        self._fn(sig)((grid,), (block,), tuple(args))


@lru_cache(maxsize=None)
def _device_module(path: str):
    import cupy

    # NVRTC runs here, once per file and process (and CuPy caches the binary on disk).
    return cupy.RawModule(code=device_source(Path(path)), options=(NVRTC_STD,))


def pretok_tiles(n: int) -> int:
    """Tiles of PT_TILE positions covering positions 0..n (n: the end of the data),
    as pretok_count and pretok_spans cut them."""
    return int(n) // PT_TILE + 1


class Kernels:
    """One typed wrapper per kernel. Arrays must be device arrays of the
    launcher (CuPy arrays, or simulator arrays), C-contiguous, of the exact
    dtype; scalars are cast to the parameter's C type, refusing values that do
    not fit. ``block`` is the 1-D block size; ``grid`` the number of blocks,
    derived from the data size where the wrapper can (all loops are
    grid-stride, so any grid is correct and the choice is only speed)."""

    def __init__(self, launcher):
        self.launcher = launcher
        self.sigs = signatures()

    def _launch(self, name: str, grid: int, block: int, kwargs: dict) -> None:
        sig = self.sigs[name]
        if not (1 <= block <= MAX_BLOCK and block & (block - 1) == 0):
            raise ValueError(f"{name}: block={block} must be a power of two in 1..{MAX_BLOCK}")
        if grid < 1 or grid > 2**31 - 1:
            raise ValueError(f"{name}: grid={grid} out of range")
        names = [p for _, p in sig.params]
        if sorted(kwargs) != sorted(names):
            raise TypeError(f"{name}: wrapper passes {sorted(kwargs)}, kernel takes {names}")
        args = []
        for ctype, pname in sig.params:
            is_ptr, dtype = _CTYPES[ctype]
            v = kwargs[pname]
            if is_ptr:
                if not self.launcher.is_device_array(v):
                    raise TypeError(f"{name}: {pname} must be a "
                                    f"{'simulator' if self.launcher.sim else 'CuPy'} device array, got {type(v).__name__}")
                if v.dtype != dtype:
                    raise TypeError(f"{name}: {pname} must be {np.dtype(dtype).name}, got {v.dtype}")
                if not v.flags.c_contiguous:
                    raise ValueError(f"{name}: {pname} must be C-contiguous")
                args.append(v)
            else:
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                    raise TypeError(f"{name}: {pname} must be an integer, got {type(v).__name__}")
                info = np.iinfo(dtype)
                if not info.min <= int(v) <= info.max:
                    raise OverflowError(f"{name}: {pname}={int(v)} does not fit {ctype}")
                args.append(dtype(int(v)))
        self.launcher.launch(sig, int(grid), int(block), args)

    @staticmethod
    def grid_over(n: int, block: int, most: int = 4096) -> int:
        """Blocks for a grid-stride loop over ``n`` items: enough to cover them
        once, at most ``most`` (the loop covers the rest)."""
        return max(1, min(most, -(-int(n) // block)))

    # -- links.cu -----------------------------------------------------------
    def build_links(self, *, block, bytes_, off, nwords, n, sym, nxt, prv, wrd, grid=None):
        if off.shape[0] != nwords + 1:
            raise ValueError(f"build_links: off has {off.shape[0]} entries, nwords + 1 = {nwords + 1}")
        grid = grid or self.grid_over(n, block)
        self._launch("build_links", grid, block, dict(bytes=bytes_, off=off, nwords=nwords, n=n, sym=sym, nxt=nxt,
                                                      prv=prv, wrd=wrd))

    # -- pair_table.cu ------------------------------------------------------
    def count_pairs(self, *, block, sym, nxt, wrd, counts, n, keys, cnt, bits, used_limit, st, grid=None):
        grid = grid or self.grid_over(n, block)
        self._launch("count_pairs", grid, block, dict(sym=sym, nxt=nxt, wrd=wrd, counts=counts, n=n, keys=keys,
                                                      cnt=cnt, bits=bits, used_limit=used_limit, st=st))

    # -- step.cu ------------------------------------------------------------
    @staticmethod
    def _check_sel(name, sel, kmax, block=None):
        if sel.shape[0] != SEL_FIELDS * kmax:
            raise ValueError(f"{name}: sel holds {sel.shape[0]} values, {SEL_FIELDS} fields x kmax={kmax} wanted")
        if block is not None and kmax > block * SELECT_LOCAL:
            raise ValueError(f"{name}: kmax={kmax} > block * {SELECT_LOCAL} = {block * SELECT_LOCAL} sorted entries")

    def step_select(self, *, block, keys, cnt, bits, tb, toff, tlen, rank, id_order, forced, nforced, max_len, cand,
                    list_start, list_len, sel, kmax, st):
        self._check_sel("step_select", sel, kmax, block)
        if id_order and rank.shape[0] != 256:
            raise ValueError("step_select: an id-order tie rule needs rank[256]")
        if keys.shape[0] != 1 << int(bits):
            raise ValueError("step_select: the pair table must hold 1 << bits slots")
        if forced.shape[0] < 2 * int(nforced):
            raise ValueError("step_select: forced must hold 2 * nforced ids")
        self._launch("step_select", 1, block, dict(keys=keys, cnt=cnt, bits=bits, tb=tb, toff=toff, tlen=tlen,
                                                   rank=rank, id_order=id_order, forced=forced, nforced=nforced,
                                                   max_len=max_len, cand=cand, list_start=list_start,
                                                   list_len=list_len, sel=sel, kmax=kmax, st=st))

    def step_find(self, *, grid, block, sym, nxt, prv, wrd, counts, mk, mkr, pool, occ, sel, kmax, skeys, scnt,
                  sbits, sused, lrun, run_walk, tb, toff, tlen, merges, mcount, min_count, nforced, list_start,
                  list_len, st):
        """Launch A of a step: the occurrences, then (last block) the long runs and the decision."""
        self._check_sel("step_find", sel, kmax)
        if kmax > DECIDE_MAX:
            raise ValueError(f"step_find: kmax={kmax} > {DECIDE_MAX} candidates staged in shared memory")
        if sused.shape[0] > skeys.shape[0] or skeys.shape[0] != 1 << int(sbits) or scnt.shape != skeys.shape:
            raise ValueError("step_find: the scratch table must hold 1 << sbits slots and sused at most as many")
        if not (sym.shape == nxt.shape == prv.shape == wrd.shape == mk.shape == mkr.shape):
            raise ValueError("step_find: sym, nxt, prv, wrd, mk and mkr must hold one entry per position")
        if lrun.shape[0] % LRUN_FIELDS:
            raise ValueError(f"step_find: lrun holds records of {LRUN_FIELDS} values")
        if 2 * mcount.shape[0] != merges.shape[0]:
            raise ValueError("step_find: mcount must hold one count per merge (merges holds two ids each)")
        self._launch("step_find", grid, block, dict(
            sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=counts, npos=sym.shape[0], mk=mk, mkr=mkr, pool=pool, occ=occ,
            occ_cap=occ.shape[0], sel=sel, kmax=kmax, skeys=skeys, scnt=scnt, sbits=sbits, sused=sused,
            slimit=sused.shape[0], lrun=lrun, lrun_cap=lrun.shape[0] // LRUN_FIELDS, run_walk=run_walk, tb=tb,
            toff=toff, tlen=tlen, tb_cap=tb.shape[0], merges=merges, mcount=mcount, min_count=min_count,
            nforced=nforced, list_start=list_start, list_len=list_len, st=st))

    def step_merge(self, *, grid, block, sym, nxt, prv, mk, mkr, wrd, counts, occ, pool, sel, kmax, keys, cnt, bits,
                   used_limit, newslots, skeys, scnt, sused, tb, toff, tlen, rank, id_order, forced, nforced, max_len,
                   cand, list_start, list_len, st):
        """Launch B of a step: the counts and the rewrite, then (last block) the
        candidate set and the next step's selection."""
        self._check_sel("step_merge", sel, kmax, block)
        if newslots.shape[0] < keys.shape[0]:
            raise ValueError("step_merge: newslots must hold one entry per pair-table slot")
        if keys.shape[0] != 1 << int(bits):
            raise ValueError("step_merge: the pair table must hold 1 << bits slots")
        if id_order and rank.shape[0] != 256:
            raise ValueError("step_merge: an id-order tie rule needs rank[256]")
        if forced.shape[0] < 2 * int(nforced):
            raise ValueError("step_merge: forced must hold 2 * nforced ids")
        self._launch("step_merge", grid, block, dict(
            sym=sym, nxt=nxt, prv=prv, mk=mk, mkr=mkr, wrd=wrd, counts=counts, occ=occ, pool=pool, sel=sel, kmax=kmax,
            keys=keys, cnt=cnt, bits=bits, used_limit=used_limit, newslots=newslots, skeys=skeys, scnt=scnt,
            sused=sused, slimit=sused.shape[0], tb=tb, toff=toff, tlen=tlen, rank=rank, id_order=id_order,
            forced=forced, nforced=nforced, max_len=max_len, cand=cand, cand_cap=cand.shape[0],
            list_start=list_start, list_len=list_len, st=st))

    # -- compact.cu ---------------------------------------------------------
    def compact_mark(self, *, block, sym, nxt, prv, wrd, counts, n, keep, st, grid=None):
        grid = grid or self.grid_over(n, block)
        self._launch("compact_mark", grid, block, dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, counts=counts, n=n,
                                                       keep=keep, st=st))

    def compact_scatter(self, *, block, sym, nxt, prv, wrd, keep, newpos, n, out_sym, out_nxt, out_prv, out_wrd,
                        grid=None):
        grid = grid or self.grid_over(n, block)
        self._launch("compact_scatter", grid, block, dict(sym=sym, nxt=nxt, prv=prv, wrd=wrd, keep=keep,
                                                          newpos=newpos, n=n, out_sym=out_sym, out_nxt=out_nxt,
                                                          out_prv=out_prv, out_wrd=out_wrd))

    # -- pretokenize.cu -----------------------------------------------------
    def pretok_specials(self, *, block, data, n, sp_bytes, sp_off, mark, grid=None):
        nsp = sp_off.shape[0] - 1
        if not 1 <= nsp <= 255 or sp_bytes.shape[0] < nsp:
            raise ValueError("pretok_specials: 1..255 special tokens (sp_off holds one offset more)")
        if data.shape[0] < n or mark.shape[0] < n:
            raise ValueError(f"pretok_specials: data and mark must hold n={n} bytes")
        grid = grid or self.grid_over(n, block)
        self._launch("pretok_specials", grid, block, dict(data=data, n=n, sp_bytes=sp_bytes, sp_off=sp_off,
                                                          nsp=nsp, mark=mark))

    def pretok_classify(self, *, block, data, n, sp_start, sp_end, cls, bmp, stage1, stage2, info, grid=None):
        if data.shape[0] < n or info.shape[0] < n:
            raise ValueError(f"pretok_classify: data and info must hold n={n} bytes")
        if sp_start.shape != sp_end.shape:
            raise ValueError("pretok_classify: sp_start and sp_end must hold one entry per special token")
        if cls.shape[0] != 256 or bmp.shape[0] != 65536 or stage1.shape[0] != 0x1100 or stage2.shape[0] % 256:
            raise ValueError("pretok_classify: class tables of the wrong size (see gpubpe.pretok.unicode.scan_tables)")
        grid = grid or self.grid_over(n, block)
        self._launch("pretok_classify", grid, block, dict(data=data, n=n, sp_start=sp_start, sp_end=sp_end,
                                                          nspec=sp_start.shape[0], cls=cls, bmp=bmp, stage1=stage1,
                                                          stage2=stage2, info=info))

    def pretok_count(self, *, block, data, info, n, tcount, grid=None):
        ntiles = pretok_tiles(n)
        if tcount.shape[0] < ntiles:
            raise ValueError(f"pretok_count: tcount must hold {ntiles} tiles")
        grid = grid or self.grid_over(ntiles, block)
        self._launch("pretok_count", grid, block, dict(data=data, info=info, n=n, ntiles=ntiles, tcount=tcount))

    def pretok_spans(self, *, block, data, info, n, toff, pos, grid=None):
        ntiles = pretok_tiles(n)
        if toff.shape[0] < ntiles:
            raise ValueError(f"pretok_spans: toff must hold {ntiles} tiles")
        grid = grid or self.grid_over(ntiles, block)
        self._launch("pretok_spans", grid, block, dict(data=data, info=info, n=n, ntiles=ntiles, toff=toff,
                                                       pos=pos))

    # -- wordcount.cu -------------------------------------------------------
    @staticmethod
    def _check_table(name, keys, bits, *arrays):
        if keys.shape[0] != 1 << int(bits) or any(a.shape[0] != keys.shape[0] for a in arrays):
            raise ValueError(f"{name}: every table array must hold 1 << bits slots")

    def wc_insert(self, *, block, data, pos, nedges, todo, ntodo, rnd, hmask, keys, words, reps, bits, occ_slot,
                  wst, grid=None):
        self._check_table("wc_insert", keys, bits, words, reps)
        if pos.shape[0] < nedges or occ_slot.shape[0] < nedges or (rnd and todo.shape[0] < ntodo):
            raise ValueError("wc_insert: pos must hold nedges edges, occ_slot nedges, todo ntodo")
        grid = grid or self.grid_over(nedges if rnd == 0 else ntodo, block)
        self._launch("wc_insert", grid, block, dict(data=data, pos=pos, nedges=nedges, todo=todo, ntodo=ntodo,
                                                    rnd=rnd, hmask=hmask, keys=keys, words=words, reps=reps,
                                                    bits=bits, occ_slot=occ_slot, wst=wst))

    def wc_verify(self, *, block, data, pos, nedges, todo, ntodo, rnd, keys, words, reps, scount, occ_slot, arena,
                  wstart, wlen, wslot, wkey, nxt, wst, grid=None):
        self._check_table("wc_verify", keys, int(keys.shape[0]).bit_length() - 1, words, reps, scount)
        if not (wstart.shape[0] == wlen.shape[0] == wslot.shape[0] == wkey.shape[0]):
            raise ValueError("wc_verify: the word arrays must hold the same number of words")
        if nxt.shape[0] < (nedges if rnd == 0 else ntodo):
            raise ValueError("wc_verify: next must hold one entry per occurrence")
        grid = grid or self.grid_over(nedges if rnd == 0 else ntodo, block)
        self._launch("wc_verify", grid, block, dict(data=data, pos=pos, nedges=nedges, todo=todo, ntodo=ntodo,
                                                    rnd=rnd, keys=keys, words=words, reps=reps, scount=scount,
                                                    occ_slot=occ_slot, arena=arena, acap=arena.shape[0],
                                                    wstart=wstart, wlen=wlen, wslot=wslot, wkey=wkey,
                                                    wcap=wstart.shape[0], next=nxt, wst=wst))

    def wc_commit(self, *, block, first, last, wslot, words, reps, grid=None):
        if last > wslot.shape[0]:
            raise ValueError("wc_commit: word ids past wslot")
        grid = grid or self.grid_over(max(last - first, 1), block)
        self._launch("wc_commit", grid, block, dict(first=first, last=last, wslot=wslot, words=words, reps=reps))

    def wc_rehash(self, *, block, nwords, wkey, wslot, scount, new_keys, new_words, new_scount, new_bits, wst,
                  grid=None):
        self._check_table("wc_rehash", new_keys, new_bits, new_words, new_scount)
        grid = grid or self.grid_over(max(nwords, 1), block)
        self._launch("wc_rehash", grid, block, dict(nwords=nwords, wkey=wkey, wslot=wslot, scount=scount,
                                                    new_keys=new_keys, new_words=new_words, new_scount=new_scount,
                                                    new_bits=new_bits, wst=wst))

    def wc_extract(self, *, block, nwords, arena, wstart, wlen, wslot, scount, off, symbols, counts, grid=None):
        if off.shape[0] != nwords + 1 or counts.shape[0] < nwords:
            raise ValueError("wc_extract: off must hold nwords + 1 offsets and counts nwords")
        grid = grid or self.grid_over(max(nwords, 1), block)
        self._launch("wc_extract", grid, block, dict(nwords=nwords, arena=arena, wstart=wstart, wlen=wlen,
                                                     wslot=wslot, scount=scount, off=off, symbols=symbols,
                                                     counts=counts))
