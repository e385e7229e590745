"""Tunables, in one place."""

# Bytes per pre-tokenization chunk. Chunks are cut at special tokens or at a
# safe boundary (see gpubpe.corpus), handed to workers (threads on the
# GPT-2 path, processes on the regex path), and counted independently. Peak memory is about (2 * workers + 1) chunks plus
# the unique words; 4 MiB keeps two cores busy on a 38 MB corpus.
CHUNK_SIZE = 4 << 20

# Below this many input bytes no worker pool is started: forking costs more
# than it saves.
MIN_PARALLEL_BYTES = 8 << 20

# How often the progress thread reads the merge loop's counter (seconds).
PROGRESS_INTERVAL = 0.1
# seconds between two JSON progress lines (--progress json) of one stage
PROGRESS_JSON_INTERVAL = 1.0

# WordTables with at most this many symbols are merged by the plain-Python
# loop (backends/cpu_python.py): it needs no compilation, and below this size
# it finishes before Numba would have compiled the fast loop.
SMALL_TABLE_SYMBOLS = 200_000

# Pre-tokens the Numba scanner counts between two checks of its hash tables'
# room (gpubpe/pretok/machine.py count_pieces): room for this many more words
# is made before each batch, so the scan loop only stores. A check costs far
# less than a batch; a larger batch keeps tables of small chunks larger.
PRETOK_BATCH = 4096

# With several worker threads, a chunk is counted as tasks of about this many
# bytes (cut where the counts cannot change), at most one per worker: a 38 MB
# corpus of 4 MiB chunks then keeps 16 threads busy, and a task (a few ms of
# scanning) costs far more than handing it out.
PRETOK_TASK_BYTES = 1 << 20

# Inputs below this many bytes are pre-tokenized with the `regex` package
# instead of the Numba state machine: loading Numba and its cached machine
# code costs about half a second in a fresh process, while `regex` does about
# 10 MB/s. Both give identical pre-tokens (tests/test_pretokenize.py).
NUMBA_PRETOKENIZE_BYTES = 4 << 20

# --- the Tokenizer (gpubpe/tokenizer.py) ---------------------------------
# Pre-tokens longer than this are merged with a heap (O(n log n)) instead of
# the rescan loop (O(n^2)); the rescan is faster on the short words that make
# up nearly all text, the heap keeps a 1 MB run of spaces or digits linear-ish.
TOKENIZER_HEAP_MIN_LEN = 48

# The pre-token cache is cleared when it holds this many entries, which keeps
# memory bounded on endless streams (a Zipfian corpus hits a few thousand
# entries almost always, so clearing costs little).
TOKENIZER_CACHE_MAX = 1 << 20

# --- corpus encoding (gpubpe/encode.py) ----------------------------------
# A worker starts a fresh cache past this many distinct pre-tokens (each
# costs about 60 bytes with its ids): memory stays bounded on any corpus, and
# the hit rate barely moves, since the frequent words come back at once.
ENCODE_CACHE_WORDS = 2_000_000
ENCODE_CACHE_BYTES = 1 << 30  # and past this many bytes of distinct pre-tokens

# Pre-tokens at least this long skip the Numba rescan loop (O(n^2)) for the
# heap loop (O(n log n)); they are rare (long runs of one class).
ENCODE_LONG_WORD = 256

# Pre-tokens at least this long are merged where they stand and never enter
# the cache: one that long hardly ever comes back, and caching it would keep
# its bytes and ids (9 bytes per byte) until the cache resets.
ENCODE_UNCACHED_WORD = 1 << 16

# The heap of a long pre-token holds n + n * ENCODE_HEAP_SLACK entries (8 bytes
# each); when full, its stale entries are dropped. A larger slack means fewer
# such passes (at most about 1 / ENCODE_HEAP_SLACK of them), a smaller one less memory.
ENCODE_HEAP_SLACK = 0.25

# Seconds a worker gets to exit after SIGTERM before it is killed.
ENCODE_STOP_SECONDS = 2.0

# --- the CPU step loop (gpubpe/backends/cpu_steps.py) ----------------------
# backend='cpu' runs the step loop (each step's merges applied in parallel by
# word) only with at least this many Numba threads; below it, the serial loop
# of cpu.py. 0: never by itself (the default). On 2 threads of a shared 2-core
# machine the step loop was slower than the serial loop (benchmarks/RESULTS.md,
# merge.steps) and no many-core figure exists yet, so it is not chosen until
# one shows where it pays; GPUBPE_CPU_STEP_THREADS sets this for a run.
CPU_STEP_MIN_THREADS = 0
# The most candidates one step takes (the dense new-pair tables are this many
# rows of 256 + merges), and word chunks per thread in a step's rewrite (more
# chunks balance words of uneven length; the merges do not depend on either).
CPU_STEP_CANDIDATES = 32
CPU_STEP_CHUNKS_PER_THREAD = 4
# A phase of a step runs on the thread pool only when it visits at least this
# many words; smaller ones run on the calling thread (a fork and join of the
# pool costs more than a few hundred word visits, and on a loaded machine a
# descheduled worker stalls the join for a time slice).
CPU_STEP_PARALLEL_WORDS = 2048

# --- the CUDA merge loop (gpubpe/backends/cuda) ---------------------------
# backend='auto' keeps tables below this many symbols on the CPU even where a
# device answers: NVRTC compilation and context start-up (about a second) cost
# more than the CPU loop on them (corpus.en, the CS336 speed bar: 0.1 M
# symbols). An estimate from the Numba loop's time here and the cost model,
# not yet checked on a device: scripts/gpu_check.sh is where to correct it.
AUTO_CUDA_MIN_SYMBOLS = 5_000_000
# Steps launched per read-back of the status (a step is 1 to
# CUDA_STEP_CANDIDATES merges in two launches; 31,743 merges take about 2,000
# steps on a 400 MB corpus). One CUDA graph holds a batch; the device stops by
# itself at the last merge, so the cost of a large batch is only no-op launches
# at the end or after a halt (about 1.5 us each), against a read-back (~20 us)
# saved. 256 steps make at least 256 merges per read-back unless the run halts.
CUDA_STEP_BATCH = 256
# The most candidates one step considers (kernels/step.cu: at most block * 4),
# and how many the first step takes; later steps take 2 * (last step's merges) + 2.
CUDA_STEP_CANDIDATES = 64
CUDA_STEP_FIRST_WANT = 8
# The per-step scratch table of created pairs (1 << bits slots, 16 bytes each);
# past CUDA_SCRATCH_MAX_LOAD of it a step falls back to one merge (exact, slower).
CUDA_SCRATCH_BITS = 18
CUDA_SCRATCH_MAX_LOAD = 0.5
# A run of equal symbols is walked by its first member's thread up to
# CUDA_RUN_WALK members (dependent steps); the rest of a longer one goes to the
# last block of the launch, which scans it 1,024 slots a round (a few us). At
# most CUDA_LONG_RUNS runs a step take that path, one after the other in that
# block; the others are walked to the end, in parallel.
CUDA_RUN_WALK = 32
CUDA_LONG_RUNS = 256
# Blocks of 256 threads per SM in the step launches: their grid-stride loops
# are chains of dependent loads, so more threads in flight mean fewer rounds.
# 4 (1,024 threads an SM) stays resident up to 64 registers a thread.
CUDA_STEP_BLOCKS_PER_SM = 4
# The candidate set holds every pair with count >= CUDA_CAND_FRACTION times the
# best count at the last refill (a full scan of the table, when nothing at or
# above that threshold is left); its array has room for at least CUDA_CAND_MIN.
CUDA_CAND_FRACTION = 0.5
CUDA_CAND_MIN = 1 << 14
# The pair table halts the loop when occupied slots pass this fraction of its
# capacity (linear probing slows past ~0.75), and is rebuilt between batches
# past CUDA_REBUILD_LOAD, at a capacity of CUDA_TABLE_SLACK times the live pairs.
CUDA_TABLE_MAX_LOAD = 0.75
CUDA_REBUILD_LOAD = 0.5
CUDA_TABLE_SLACK = 4
CUDA_MIN_TABLE_BITS = 10
# Positions are compacted when removed symbols pass this fraction of them.
CUDA_COMPACT_FRACTION = 0.5

# Training warns (LongTokenWarning) when a token is longer than this many
# bytes: every export spells each token out, so a 50 MB run of one letter
# makes gigabytes of files unless max_token_length caps it.
LONG_TOKEN_WARN_BYTES = 1 << 20

# chunk_size above this is refused: a chunk is read into memory whole, and a
# 10**12 chunk fails only when the read asks for it.
MAX_CHUNK_SIZE = 1 << 32

# Rows per batch when reading Parquet (memory: one batch of text at a time).
PARQUET_BATCH_ROWS = 8192

# Files are read in blocks of at most this many bytes, whatever chunk_size is
# (chunks are assembled from blocks at safe cuts).
READ_BLOCK = 64 << 20

# --- pre-tokenization and counting on the device (gpubpe/pretok/device.py) ---
# backend='cuda' (and 'cuda-sim') training with the GPT-2 pattern counts on the
# device and hands the WordTable to the merge loop there; False counts on the CPU.
DEVICE_PRETOKENIZE = True
# backend='auto' counts on the device only inputs of at least this many bytes
# (or of unknown size: a stream); smaller ones on the CPU, as AUTO_CUDA_MIN_SYMBOLS
# keeps small tables' merges there. An estimate, to be checked on a device.
AUTO_DEVICE_COUNT_BYTES = 64 << 20
# Rounds of the device word table per chunk (kernels/wordcount.cu): round r
# hashes with seed r the occurrences whose key met another word. With a 64-bit
# hash a second round is already rare; what is left after these goes to the host.
DEVICE_COUNT_ROUNDS = 4
# The device word table: initial slots (log2) and the load it is grown at, so
# probe chains stay short; its size is set before a chunk for the worst case
# (every occurrence a new word), never during one.
DEVICE_COUNT_MIN_BITS = 12
DEVICE_COUNT_MAX_LOAD = 0.5
# Special tokens are looked for on the device (kernels/pretokenize.cu: every
# byte compared with each token) up to this many tokens; more go through the
# host's regex (its alternation does not slow down with the count).
DEVICE_SPECIALS_MAX = 64
# Bytes per chunk on the device path when chunk_size is not given: each chunk
# costs a few read-backs and Python calls (tens of us) and its launches a
# fixed start-up, so chunks are larger than the CPU's CHUNK_SIZE; 32 MiB is
# 13 chunks on a 400 MB corpus, and one chunk (with its word table growth)
# stays far below a device's memory (benchmarks/RESULTS.md, model.pretok).
DEVICE_CHUNK_SIZE = 32 << 20
# A plain file counted on the device is read straight into this many pinned
# host buffers of a chunk each (gpubpe.corpus.ChunkReader): one being copied
# to the device, one being counted, the others being filled ahead.
DEVICE_READ_BUFFERS = 4
# Threads reading one buffer's parts (os.preadv), at most one per core: one
# thread reads a file in the page cache at about 6 GB/s here, a quarter of the
# host-to-device copy (about 25 GB/s); eight (GPU hosts have 16 cores or more)
# leave the copy the bound with room to spare. Parts are at least
# READ_PART_MIN bytes (a smaller read costs more in its call than it moves).
DEVICE_READ_THREADS = 8
READ_PART_MIN = 1 << 20
# The reader looks for a safe cut in the last READ_CUT_WINDOW bytes of a
# buffer first (almost always found there: text has a space every few bytes),
# then in the whole buffer; the bytes after the cut start the next buffer.
READ_CUT_WINDOW = 64 << 10


# Where derived data is cached between runs (the Unicode class table rebuilt
# for the installed `regex`, see gpubpe/pretok/unicode.py). GPUBPE_CACHE_DIR wins,
# then $XDG_CACHE_HOME/gpubpe, then ~/.cache/gpubpe. An unwritable cache is
# not an error: the table is then rebuilt in memory (a fraction of a second).
import os as _os

CACHE_DIR = _os.environ.get("GPUBPE_CACHE_DIR") or _os.path.join(
    _os.environ.get("XDG_CACHE_HOME") or _os.path.join(_os.path.expanduser("~"), ".cache"), "gpubpe"
)


# --- environment knobs, read when used (tests and scripts set them per run) ---
def env(name: str, default: str | None = None) -> str | None:
    """The environment knob ``name``; every one gpubpe reads is listed here:

    GPUBPE_CACHE_DIR    cache folder (see CACHE_DIR)
    GPUBPE_KERNEL_DIR   folder of kernels/*.cu (default: in the package or the source tree)
    GPUBPE_NVRTC        path of libnvrtc for the compile check (default: the pip wheel, CUDA_HOME)
    GPUBPE_SIM_SEED     base seed of cuda-sim's shuffled schedules (default: random, printed on failure)
    GPUBPE_SIM_ASAN     1/0: AddressSanitizer in cuda-sim (default: on where it builds)
    GPUBPE_CPU_STEP_THREADS  backend='cpu' takes the step loop from this many Numba threads on (see CPU_STEP_MIN_THREADS)
    CXX                 host compiler for cuda-sim (default g++)
    CUDA_HOME/CUDA_PATH where to look for libnvrtc
    """
    if name not in _KNOBS:
        raise KeyError(f"{name} is not a gpubpe environment knob (config.env lists them)")
    return _os.environ.get(name) or default


_KNOBS = {"GPUBPE_CACHE_DIR", "GPUBPE_KERNEL_DIR", "GPUBPE_NVRTC", "GPUBPE_SIM_SEED", "GPUBPE_SIM_ASAN", "GPUBPE_CPU_STEP_THREADS", "CXX",
          "CUDA_HOME", "CUDA_PATH"}
