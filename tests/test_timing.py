"""StepClock: a step's phases timed on the device's timeline (CUDA events; the host clock on CPU)."""

import time

import pytest
import torch

from specdec.core.timing import StepClock


def test_cpu_clock_measures_the_work_between_marks():
    clock = StepClock(torch.device("cpu"))
    clock.mark(0)
    time.sleep(0.02)
    clock.mark(1)
    time.sleep(0.05)
    clock.mark(2)
    # sleeps never end early; a loaded machine may wake late (generous upper bounds)
    assert 0.019 < clock.seconds(0, 1) < 1.0
    assert 0.049 < clock.seconds(1, 2) < 1.0
    assert clock.seconds(0, 2) == pytest.approx(clock.seconds(0, 1) + clock.seconds(1, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA events need a GPU; CPU twin above")
def test_cuda_clock_measures_gpu_time_not_the_hosts_enqueue_time():
    device = torch.device("cuda")
    clock = StepClock(device)
    torch.cuda.synchronize()
    host_start = time.perf_counter()
    clock.mark(0)
    torch.cuda._sleep(50_000_000)  # a GPU spin of tens of milliseconds, enqueued in microseconds
    clock.mark(1)
    clock.mark(2)
    host_enqueue = time.perf_counter() - host_start
    torch.cuda.synchronize()
    assert clock.seconds(0, 1) > 5 * host_enqueue
    assert 0 <= clock.seconds(1, 2) < clock.seconds(0, 1)


def test_engine_times_draft_and_verification_per_step():
    import specdec
    from tests.tiny_models import prompt, tiny_llama

    model = specdec.wrap(tiny_llama(seed=0), tiny_llama(hidden=32, layers=1, seed=1), num_draft_tokens=3)
    model.generate(prompt(8, 0), max_new_tokens=12)
    stats = model.stats
    assert stats.draft_time > 0 and stats.verify_time > 0
    assert stats.draft_time + stats.verify_time <= stats.total_time
