"""Measured kernel choice (npresnet.engine.autotune, npresnet.engine.conv_dispatch).

What is tested (never a timing: which candidate wins is the machine's business):
* every candidate algorithm of a convolution (im2col + GEMM at each chunk size, the same on each
  thread's slice of the batch, the direct 3x3 kernels) equals the NumPy reference to rounding,
  forward, dx and dw, on awkward shapes, at one and at two Numba threads;
* a shape is timed once per process, a new shape (or another thread count) once more;
* the fixed mode gives the same bits in every process;
* the cache file: a process finds its machine's winners there and times nothing; sections of
  another CPU or other library versions are ignored and kept; an unreadable file is ignored, with
  a warning, and rewritten; on by default in the user's cache directory (a fresh process with a
  warm cache times no candidate), off with NPRESNET_AUTOTUNE_CACHE=off; racing writers never tear it;
* candidates far slower than the best after the first round are timed no more; one candidate of
  each family is timed first, then only the winning family's others; times are compared per unit
  of work (a candidate timed on a slice of the batch); a shape of a class already decided (the same
  layer at another batch size) takes that decision's family without timing;
* the convolution's candidates timed on the batch's first samples (``probe_samples``) still choose
  an algorithm that equals the reference on the whole batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from npresnet import kernels
from npresnet.engine import autotune, conv_dispatch
from npresnet.engine.conv import direct_gradients, run_forward, run_gradients
from npresnet.functional.conv import conv2d_backward, conv2d_forward, output_size

TESTS = Path(__file__).resolve().parent
numba_only = pytest.mark.skipif(kernels.active() != "numba", reason="Numba kernels not active")

# (N, C, O, H, W), kernel, stride, padding, dilation: H != W, stride 2, dilation, batch 1,
# 1-3 channels, odd sizes, and thin 3x3 layers where the direct kernels (and Winograd) are candidates.
AWKWARD = [
    ((1, 1, 2, 7, 5), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 2, 3, 9, 6), (3, 3), (1, 1), (2, 1), (2, 1)),
    ((2, 3, 4, 11, 8), (3, 3), (2, 2), (1, 1), (1, 1)),
    ((5, 3, 5, 6, 13), (3, 3), (1, 1), (0, 2), (1, 2)),
    ((4, 2, 6, 7, 7), (5, 3), (2, 1), (2, 1), (1, 1)),
    ((1, 16, 16, 8, 9), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((6, 40, 24, 5, 7), (3, 3), (1, 1), (1, 1), (1, 1)),
    ((3, 3, 5, 6, 9), (3, 3), (1, 1), (0, 2), (1, 1)),  # Winograd: no padding / padding 2, odd sizes
]


@pytest.fixture
def measuring(tmp_path):
    """Measure mode with a fresh memory (and no cache file) for the test; restored afterwards."""
    previous = autotune.set_mode("measure")
    autotune.set_cache_file(None)
    autotune.clear()
    yield tmp_path
    autotune.set_mode(previous)
    autotune.set_cache_file(None)
    autotune.clear()


def _inputs(case, dtype=np.float64, seed=0):
    (N, C, O, H, W), k, s, p, d = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, *k)).astype(dtype)
    return x, w


def candidate_names(x, w, stride, padding, dilation):
    """Every algorithm conv_dispatch may time for this conv."""
    N, C, H, W = x.shape
    O, _, KH, KW = w.shape
    OH, OW = output_size(x.shape, w.shape, stride, padding, dilation)
    column_bytes = C * KH * KW * OH * OW * x.dtype.itemsize
    names = [f"gemm/{n}" for n in conv_dispatch.chunk_candidates(np, N=N, column_bytes_per_sample=column_bytes)]
    names += [f"gemm/{n}" for n in (1, N)]
    names += [f"split/{n}" for n in (1, 2, N)]  # at one thread a split runs inline: the same loop
    geometry = {"kernel": (KH, KW), "stride": stride, "padding": padding, "dilation": dilation, "groups": 1}
    if conv_dispatch.direct_applies(x, **geometry):
        names.append("direct")
    if conv_dispatch.winograd_applies(x, **geometry):
        names += [f"winograd/{n}" for n in (1, 2, N)] + [f"winograd-split/{n}" for n in (1, 2, N)]
    return list(dict.fromkeys(names)), (OH, OW)


def check_every_candidate(cases=AWKWARD):
    """Each candidate's forward, dx and dw against the reference (float64; float32 to 1e-5)."""
    checked = 0
    for case in cases:
        for dtype, bound in ((np.float64, 1e-12), (np.float32, 2e-5)):
            x, w = _inputs(case, dtype)
            _, k, s, p, d = case
            with kernels.reference_only():
                y_ref, cache_ref = conv2d_forward(x, w, None, s, p, d)
                dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(dtype)
                dx_ref, dw_ref, _ = conv2d_backward(dy, cache_ref)
            _, cache = conv2d_forward(x, w, None, s, p, d)
            names, _ = candidate_names(x, w, s, p, d)
            geometry = {"stride": s, "padding": p, "dilation": d, "groups": 1}
            assert ("direct" in names) == (
                k == (3, 3) and s == (1, 1) and p[0] <= 2 * d[0] and p[1] <= 2 * d[1] and kernels.active() == "numba"
            )
            assert any(n.startswith("winograd") for n in names) == (
                k == (3, 3) and s == (1, 1) and d == (1, 1) and max(p) <= 2 and kernels.active() == "numba"
            )
            for name in names + (["direct/dots"] if "direct" in names else []):
                if name == "direct/dots":  # a weight-gradient candidate only
                    results = [("dw", run_gradients(dy, cache, weight_algorithm=name)[1], dw_ref)]
                else:
                    y = run_forward(name, x, w, **geometry)
                    dx, _ = run_gradients(dy, cache, input_algorithm=name)
                    _, dw = run_gradients(dy, cache, weight_algorithm=name)
                    shared = run_gradients(dy, cache, input_algorithm=name, weight_algorithm=name)
                    results = [
                        ("y", y, y_ref),
                        ("dx", dx, dx_ref),
                        ("dw", dw, dw_ref),
                        ("dx shared", shared[0], dx_ref),
                        ("dw shared", shared[1], dw_ref),
                    ]
                for what, got, want in results:
                    assert got.shape == want.shape and got.dtype == want.dtype, (case, name, what)
                    error = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
                    assert error <= bound, (case, name, what, dtype, error)
                checked += 1
    return checked


def test_every_candidate_matches_the_reference():
    assert check_every_candidate() >= 3 * len(AWKWARD)


def test_every_candidate_matches_the_reference_at_two_threads():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import numba
        from npresnet import kernels
        import numpy as np
        import test_autotune
        from npresnet.engine import batch_threads
        kernels.set_num_threads(2)
        assert numba.get_num_threads() == 2
        assert batch_threads.threads() == 2 and batch_threads.available(np)  # "split" really splits
        print(test_autotune.check_every_candidate(), "ok")
    """)
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_shape_is_timed_once_per_process(measuring):
    x, w = _inputs(AWKWARD[1])
    for _ in range(3):
        y, cache = conv2d_forward(x, w, None, 1, (2, 1), (2, 1))
        conv2d_backward(np.ones_like(y), cache)
    timed = autotune.timed_keys()
    assert [key.split(" | ")[0] for key in timed] == ["conv2d forward", "conv2d input grad", "conv2d weight grad"]
    assert set(autotune.choices()) == set(timed)
    winners = autotune.choices().values()
    assert all(winner in ("direct", "direct/dots") or winner.startswith("gemm/") for winner in winners)
    conv2d_forward(x[:2], w, None, 1, (2, 1), (2, 1))  # a smaller batch of the same layer: not timed
    assert len(autotune.timed_keys()) == 3 and len(autotune.choices()) == 4
    conv2d_forward(x, w, None, 1, (2, 1), (2, 1))
    assert len(autotune.timed_keys()) == 3


def test_measure_mode_keeps_the_fixed_choice_unless_another_is_clearly_faster(measuring):
    """Within KEEP_FIXED_WITHIN of the fastest, the fixed rule's candidate stays; clearly slower, it
    gives way. The candidates sleep, so the gaps (15 ms against 14 or 2 ms) are far above timing noise."""

    def sleeper(seconds):
        return lambda: time.sleep(seconds)

    assert autotune.KEEP_FIXED_WITHIN >= 0.1
    close = {"rule": sleeper(0.015), "other": sleeper(0.014)}
    assert autotune.choose("test op", "close", close, fixed="rule") == "rule"
    far = {"rule": sleeper(0.015), "other": sleeper(0.002)}
    assert autotune.choose("test op", "far", far, fixed="rule") == "other"


def test_the_fixed_mode_gives_the_same_bits_in_every_process():
    code = textwrap.dedent("""
        import hashlib
        import numpy as np
        from npresnet.engine import autotune
        from npresnet.functional.conv import conv2d_backward, conv2d_forward
        assert autotune.mode() == "fixed"
        rng = np.random.default_rng(0)
        digest = hashlib.sha256()
        for C, O, H in ((16, 16, 12), (32, 48, 9), (3, 16, 17)):
            x = rng.standard_normal((7, C, H, H + 3)).astype(np.float32)
            w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
            y, cache = conv2d_forward(x, w, None, 1, 1)
            dx, dw, _ = conv2d_backward(np.cos(y), cache)
            for a in (y, dx, dw):
                digest.update(a.tobytes())
        assert not autotune.timed_keys()
        print(digest.hexdigest())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("NPRESNET_AUTOTUNE", "NPRESNET_AUTOTUNE_CACHE")}
    digests = set()
    for numba_threads in ("2", "2", "1"):  # the kernels give the same bits at any count (BLAS may not)
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=600,
            env={**env, "NUMBA_NUM_THREADS": numba_threads, "OPENBLAS_NUM_THREADS": "2"},
        )
        assert done.returncode == 0, done.stderr[-3000:]
        digests.add(done.stdout.strip())
    assert len(digests) == 1, digests


def _timed_run(cache_file: Path) -> list[str]:
    """Measure one conv's forward with the cache file; the entry keys timed."""
    autotune.clear()
    autotune.set_cache_file(cache_file)
    x, w = _inputs(AWKWARD[5], np.float32)
    conv2d_forward(x, w, None, 1, 1)
    return autotune.timed_keys()


def test_the_cache_file_serves_its_own_machine_only(measuring):
    cache_file = measuring / "autotune.json"
    first = _timed_run(cache_file)
    assert len(first) == 1
    content = json.loads(cache_file.read_text())
    (section,) = content["sections"]
    assert section["machine"] == autotune.machine() and list(section["choices"]) == first
    assert _timed_run(cache_file) == []  # found on disk: nothing timed

    # The same entries under another CPU, and under another NumPy version: both ignored, both kept.
    # So is a CPU with the same model name but another family / model / stepping ("AMD EPYC" names
    # several generations).
    other_cpu = {**autotune.machine(), "cpu": "Some Other CPU @ 1.00GHz"}
    other_numpy = json.loads(json.dumps(autotune.machine()))
    other_numpy["versions"]["numpy"] = "0.0.1"
    other_generation = {**autotune.machine(), "cpu_id": {**autotune.machine()["cpu_id"], "model": "999"}}
    foreign = [{"machine": m, "choices": section["choices"]} for m in (other_cpu, other_numpy, other_generation)]
    cache_file.write_text(json.dumps({"format": autotune.FORMAT, "sections": foreign}))
    assert _timed_run(cache_file) == first  # timed again
    sections = json.loads(cache_file.read_text())["sections"]
    assert [s["machine"] for s in sections] == [other_cpu, other_numpy, other_generation, autotune.machine()]

    # A winner that names no candidate of this shape (a stale file) is timed again, not trusted.
    sections[-1]["choices"] = {first[0]: "gemm/999"}
    cache_file.write_text(json.dumps({"format": autotune.FORMAT, "sections": sections}))
    assert _timed_run(cache_file) == first


@pytest.mark.parametrize("content", [b"{not json", b'{"format": "something-else", "sections": []}', b"\xff\xfe"])
def test_an_unreadable_cache_file_is_ignored_and_rewritten(measuring, content):
    cache_file = measuring / "autotune.json"
    cache_file.write_bytes(content)
    with pytest.warns(RuntimeWarning, match=f"ignoring the cache file {cache_file}") as caught:
        first = _timed_run(cache_file)
    assert len(first) == 1 and len(caught) == 1
    assert "\n" not in str(caught[0].message)  # one line
    (section,) = json.loads(cache_file.read_text())["sections"]
    assert list(section["choices"]) == first
    assert sorted(os.listdir(measuring)) == ["autotune.json"]  # no debris
    assert _timed_run(cache_file) == []  # and it serves the next process


_WARM_CACHE_STEP = textwrap.dedent("""
    import numpy as np
    from npresnet.engine import autotune, runtime
    from npresnet.functional.conv import conv2d_backward, conv2d_forward
    runtime.set_num_threads(1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    y, cache = conv2d_forward(x, w, None, 1, 1)
    conv2d_backward(np.cos(y), cache)
    print(autotune.cache_file())
    print(len(autotune.timed_keys()), len(autotune.choices()))
""")


def _measured_process(env: dict[str, str]) -> tuple[str, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", _WARM_CACHE_STEP], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    path, counts = done.stdout.strip().splitlines()[-2:]
    timed, chosen = map(int, counts.split())
    return path, timed, chosen


def test_the_cache_is_on_by_default_in_the_users_cache_directory(tmp_path):
    """A fresh process with a warm cache times no candidate; the file is the machine's own, under
    XDG_CACHE_HOME; NPRESNET_AUTOTUNE_CACHE=off leaves no file and times again."""
    env = {k: v for k, v in os.environ.items() if k != "NPRESNET_AUTOTUNE_CACHE"}
    env.update(NPRESNET_AUTOTUNE="measure", XDG_CACHE_HOME=str(tmp_path / "cache"))
    path, timed, chosen = _measured_process(env)
    assert Path(path).parent == tmp_path / "cache" / "npresnet" / "autotune" and Path(path).is_file()
    assert timed == chosen == 3
    assert _measured_process(env) == (path, 0, 3)  # warm: nothing timed

    off = {**env, "NPRESNET_AUTOTUNE_CACHE": "off", "XDG_CACHE_HOME": str(tmp_path / "elsewhere")}
    assert _measured_process(off) == ("None", 3, 3)
    assert not (tmp_path / "elsewhere").exists()


def test_two_processes_racing_never_tear_the_cache_file(tmp_path):
    """Writers that interleave keep a whole file that one of them wrote (atomic replace); each
    entry a process wrote survives unless a racing writer's merge missed it, and the file is never
    ignored as unreadable afterwards."""
    cache_file = tmp_path / "autotune.json"
    code = textwrap.dedent(f"""
        import sys, warnings
        from npresnet.engine import autotune
        warnings.simplefilter("error")
        autotune.set_mode("measure")
        autotune.set_cache_file({str(cache_file)!r})
        for i in range(40):
            autotune.choose("race", (sys.argv[1], i), {{"a": lambda: None, "b": lambda: None}}, fixed="a")
    """)
    racers = [subprocess.Popen([sys.executable, "-c", code, name]) for name in ("p", "q")]
    assert [r.wait(timeout=300) for r in racers] == [0, 0]
    (section,) = json.loads(cache_file.read_text())["sections"]
    keys = list(section["choices"])
    assert any("('p', 39)" in k for k in keys) or any("('q', 39)" in k for k in keys)
    assert set(section["choices"].values()) <= {"a", "b"}
    assert sorted(os.listdir(tmp_path)) == ["autotune.json"]


def test_candidates_far_behind_after_the_first_round_are_timed_no_more(measuring):
    runs = {"fast": 0, "close": 0, "slow": 0}

    def sleeper(name, seconds):
        def run():
            runs[name] += 1
            time.sleep(seconds)

        return run

    candidates = {"fast": sleeper("fast", 0.002), "close": sleeper("close", 0.0022), "slow": sleeper("slow", 0.02)}
    assert autotune.choose("test op", "prune", candidates, fixed="fast") == "fast"
    assert runs["slow"] == 2  # the untimed run and the first round: over PRUNE_FACTOR x the best
    assert runs["fast"] == runs["close"] == 1 + autotune.TIMED_ROUNDS
    assert autotune.choosing_seconds() > 0


def test_replayed_choices_are_used_without_timing(measuring):
    def never():
        raise AssertionError("a replayed choice must not be timed")

    autotune.choose("test op", "k", {"a": lambda: None, "b": lambda: None}, fixed="a")
    (entry,) = autotune.choices()
    autotune.clear()
    autotune.replay({entry: "b"})
    assert autotune.choose("test op", "k", {"a": never, "b": never}, fixed="a") == "b"
    assert autotune.timed_keys() == []


def test_bad_modes_are_refused():
    with pytest.raises(ValueError, match=r"autotune mode must be one of \('fixed', 'measure'\), got 'fast'"):
        autotune.set_mode("fast")
    with pytest.raises(ValueError, match="the fixed choice 'b' is not a candidate"):
        autotune.choose("op", (1,), {"a": lambda: None}, fixed="b")
    env = {**os.environ, "NPRESNET_AUTOTUNE": "always"}
    done = subprocess.run(
        [sys.executable, "-c", "import npresnet.engine"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "NPRESNET_AUTOTUNE='always' is not valid: expected fixed or measure" in done.stderr


def test_fixed_mode_keeps_the_documented_rule():
    """The default reproduces the rule of the first development machine (kernels/conv3x3_cpu.py)."""
    assert autotune.mode() == "fixed"
    if kernels.active() != "numba":
        pytest.skip("the direct kernels need Numba")
    seen = []

    def observe(name, kernel):  # kernels.get hands out this wrapper: record the calls
        def run(*args):
            seen.append(name)
            return kernel(*args)

        return run

    previous = kernels.set_observer(observe)
    try:
        for C, direct_forward, direct_grads in ((16, True, True), (32, False, True), (64, False, False)):
            seen.clear()
            x = np.ones((2, C, 6, 6), np.float32)
            y, cache = conv2d_forward(x, np.ones((C, C, 3, 3), np.float32), None, 1, 1)
            conv2d_backward(y, cache)
            assert ("conv3x3_forward" in seen) == direct_forward, (C, seen)
            assert ("conv3x3_backward_input" in seen) == direct_grads == direct_gradients(cache), (C, seen)
            assert ("conv3x3_backward_weight" in seen) == direct_grads, (C, seen)
    finally:
        kernels.set_observer(previous)


def _counting(runs, seconds):
    """Candidates that sleep ``seconds[name]`` and count their runs in ``runs``."""

    def candidate(name):
        def run():
            runs[name] = runs.get(name, 0) + 1
            time.sleep(seconds[name])

        return run

    return {name: candidate(name) for name in seconds}


def test_one_candidate_per_family_first_then_the_winning_familys_others(measuring):
    runs: dict[str, int] = {}
    seconds = {"slow/1": 0.012, "slow/2": 0.001, "fast/1": 0.003, "fast/2": 0.0012, "fast/3": 0.004}
    assert autotune.choose("test op", "families", _counting(runs, seconds), fixed="slow/1") == "fast/2"
    assert "slow/2" not in runs  # its family lost in the first stage: never run, though fastest of all
    assert runs["fast/1"] == 3  # its untimed run, two rounds
    assert runs["fast/2"] == runs["fast/3"] == 1  # one round, no untimed run: their family has run
    assert runs["slow/1"] == 3  # the untimed call that pages memory in, two rounds: the rule is never pruned


def test_times_are_compared_per_unit_of_work(measuring):
    """A candidate timed on a quarter of the job at 60% of the other's time is 2.4x slower per unit."""
    seconds = {"whole/1": 0.010, "slice/1": 0.006}
    work = {"whole/1": 1.0, "slice/1": 0.25}
    assert autotune.choose("test op", "work", _counting({}, seconds), fixed="slice/1", work=work) == "whole/1"
    assert autotune.choose("test op", "no work", _counting({}, seconds), fixed="whole/1") == "slice/1"


def test_a_smaller_batch_of_a_decided_layer_takes_its_method_without_timing(measuring):
    def choose(batch, layer, seconds, runs=None):
        candidates = _counting({} if runs is None else runs, seconds)
        return autotune.choose("test op", (batch, layer), candidates, fixed=next(iter(seconds)), similar=(layer, batch))

    assert choose(8, "layer", {"a/4": 0.006, "b/4": 0.001}) == "b/4"
    runs: dict[str, int] = {}
    later = {"a/2": 0.001, "b/2": 0.006}  # the last, smaller batch: other names, b's method still wins
    assert choose(2, "layer", later, runs) == "b/2"
    assert runs == {} and len(autotune.timed_keys()) == 1
    assert choose(2, "other", later) == "a/2"  # another layer: timed
    assert len(autotune.timed_keys()) == 2


def test_a_larger_batch_than_any_decided_is_timed(measuring):
    """A batch-1 call (a summary, a smoke test) must not choose for the training batch."""
    seconds = {"a/1": 0.001, "b/1": 0.006}
    assert autotune.choose("test op", (1, "layer"), _counting({}, seconds), fixed="a/1", similar=("layer", 1)) == "a/1"
    later = {"a/8": 0.006, "b/8": 0.001}
    assert autotune.choose("test op", (8, "layer"), _counting({}, later), fixed="a/8", similar=("layer", 8)) == "b/8"
    assert len(autotune.timed_keys()) == 2
    smaller = {"a/4": 0.001, "b/4": 0.006}  # now the batch-8 decision stands for the smaller batches
    assert autotune.choose("test op", (4, "layer"), _counting({}, smaller), fixed="a/4", similar=("layer", 4)) == "b/4"
    assert len(autotune.timed_keys()) == 2


def test_probe_samples_are_whole_rounds_of_the_loop_and_at_most_the_batch():
    threads = conv_dispatch.batch_threads.threads()
    flop = conv_dispatch.PROBE_FLOP
    assert conv_dispatch.probe_samples("gemm/7", N=128, flop_per_sample=flop) == 7  # one chunk holds enough
    assert conv_dispatch.probe_samples("gemm/7", N=128, flop_per_sample=flop / 10) == 14  # 10 samples: 2 chunks
    assert conv_dispatch.probe_samples("split/3", N=128, flop_per_sample=flop) == 3 * threads
    assert conv_dispatch.probe_samples("direct", N=128, flop_per_sample=flop / 5) % threads == 0
    assert conv_dispatch.probe_samples("winograd/16", N=12, flop_per_sample=1.0) == 12  # never over N


@pytest.mark.parametrize(
    "case", [AWKWARD[1], AWKWARD[5], AWKWARD[6], ((9, 3, 4, 7, 6), (3, 3), (2, 2), (1, 1), (1, 1))]
)
def test_candidates_timed_on_the_first_samples_choose_a_correct_algorithm(measuring, monkeypatch, case):
    """With a tiny PROBE_FLOP every candidate is timed on one round of its loop, a slice of the
    batch; the algorithm chosen then computes the whole batch equal to the reference."""
    monkeypatch.setattr(conv_dispatch, "PROBE_FLOP", 1.0)
    (N, C, O, H, W), k, s, p, d = case
    x, w = _inputs(case, np.float32)
    with kernels.reference_only():
        y_ref, cache_ref = conv2d_forward(x, w, None, s, p, d)
        dy = np.random.default_rng(1).standard_normal(y_ref.shape).astype(np.float32)
        dx_ref, dw_ref, _ = conv2d_backward(dy, cache_ref)
    y, cache = conv2d_forward(x, w, None, s, p, d)
    dx, dw, _ = conv2d_backward(dy, cache)
    assert len(autotune.timed_keys()) == 3 or kernels.active() != "numba"  # Numba: direct vs gemm at least
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * float(np.abs(want).max()))


@numba_only
def test_the_small_blas_products_weight_gradient_is_no_candidate_above_32_channels(measuring):
    for case in (AWKWARD[5], AWKWARD[6]):  # 16 channels; 40 and 24
        x, w = _inputs(case, np.float32)
        y, cache = conv2d_forward(x, w, None, 1, 1)
        conv2d_backward(np.ones_like(y), cache)
    weight_entries = [entry for entry in autotune.choices() if entry.startswith("conv2d weight grad")]
    assert len(weight_entries) == 2
    thin, wide = sorted(weight_entries, key=lambda entry: "(6, 40" in entry)
    assert "'direct'" in thin and "'direct/dots'" in thin
    assert "'direct'" not in wide and "'direct/dots'" in wide


def test_each_family_is_first_timed_at_its_likeliest_chunk_size():
    """The smallest chunk whose GEMMs are wide enough (MIN_GEMM_COLUMNS), else the widest."""
    assert conv_dispatch.MIN_GEMM_COLUMNS == 256
    assert conv_dispatch._likeliest_first([1, 4, 16], 49) == [16, 1, 4]  # 7x7: 784 columns at 16 samples
    assert conv_dispatch._likeliest_first([2, 1, 8], 3136) == [1, 2, 8]  # 56x56: one sample is wide
    assert conv_dispatch._likeliest_first([7, 1, 28, 64], 64) == [7, 1, 28, 64]
    assert conv_dispatch._likeliest_first([1, 2], 16) == [2, 1]  # never wide: the widest
    assert conv_dispatch._likeliest_first([], 16) == []


def test_the_fixed_candidate_is_timed_in_the_first_stage_beside_its_familys_first(measuring):
    runs: dict[str, int] = {}
    seconds = {"a/4": 0.001, "a/1": 0.005, "b/1": 0.003}  # a/1, the rule, is not its family's first
    assert autotune.choose("test op", "fixed", _counting(runs, seconds), fixed="a/1") == "a/4"
    assert runs["a/1"] >= 2 and runs["a/4"] >= 1 and runs["b/1"] >= 1
