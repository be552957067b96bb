"""Concurrent jobs on one multi-GPU machine each claim a different GPU, and a claim outlives nothing."""

import subprocess
import sys
import time

import pytest

from diffusion_curriculum.gpu import claim_device

CLAIM = "import sys, time; from diffusion_curriculum.gpu import claim_device; print(claim_device(2, sys.argv[1], poll_s=0.1), flush=True); time.sleep(float(sys.argv[2]))"  # noqa: E501


def _claimer(lock_dir, hold_s):
    return subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(lock_dir), str(hold_s)], stdout=subprocess.PIPE, text=True
    )


def test_concurrent_jobs_get_different_devices_and_a_third_waits_for_a_free_one(tmp_path):
    first, second = _claimer(tmp_path, 4), _claimer(tmp_path, 30)
    claimed = {int(first.stdout.readline()), int(second.stdout.readline())}
    assert claimed == {0, 1}
    started = time.monotonic()
    third = _claimer(tmp_path, 0)
    # Both devices are held: the third job gets one only after the first job exits.
    assert int(third.stdout.readline()) in claimed
    # The lock goes when the first job's files close on exit, a moment before it can be reaped.
    assert first.wait(timeout=10) == 0 and time.monotonic() - started > 1.0
    for proc in (second, third):
        proc.kill()
        proc.wait()


def test_a_killed_job_frees_its_device(tmp_path):
    holder = _claimer(tmp_path, 60)
    index = int(holder.stdout.readline())
    holder.kill()
    holder.wait()
    assert index == 0 and claim_device(1, tmp_path, wait_s=5, poll_s=0.1) == 0


def test_gives_up_with_a_clear_message_when_nothing_frees(tmp_path):
    holder = _claimer(tmp_path, 60)
    other = _claimer(tmp_path, 60)
    holder.stdout.readline(), other.stdout.readline()
    with pytest.raises(RuntimeError, match="--resources gpu"):
        claim_device(2, tmp_path, wait_s=0.5, poll_s=0.1)
    for proc in (holder, other):
        proc.kill()
        proc.wait()


def test_jobs_per_device_fills_every_device_before_sharing_one(tmp_path):
    got = [claim_device(2, tmp_path, wait_s=0.5, poll_s=0.1, jobs_per_device=2) for _ in range(4)]
    assert got == [0, 1, 0, 1]
    with pytest.raises(RuntimeError):
        claim_device(2, tmp_path, wait_s=0.3, poll_s=0.1, jobs_per_device=2)
