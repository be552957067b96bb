"""Every benchmark in benchmarks/ runs end to end in its smallest CPU form and prints the tables that
BENCHMARKS.md quotes.  The timings themselves are not asserted (machines are noisy); what is asserted is
what must hold on any device: every compared path is in the table, the FLOP counter agrees with the
analytic count, the project's samplers produce what the plain reference loop produces, and the memory
estimate counts weights, optimiser state and activations as their sizes say.
"""

import re
import sys

import pytest

from conftest import REPO, run_cli

BENCHMARKS = REPO / "benchmarks"


def run_benchmark(name: str, *args: str) -> str:
    return run_cli([sys.executable, str(BENCHMARKS / name), *args], REPO, timeout=300).stdout


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """The Markdown tables in ``text``, each as a list of {header: cell} rows."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) > 2:
            tables.append([dict(zip(block[0], row, strict=True)) for row in block[2:]])
        block = []
    return tables


def number(cell: str) -> float:
    return float(re.match(r"[-+−]?[\d.]+(?:e[-+]?\d+)?", cell).group(0).replace("−", "-"))


def test_train_throughput_compares_every_path_and_counts_flops_analytically():
    out = run_benchmark(
        "train_throughput.py", "--device", "cpu", "--tiny",
        "--rounds", "1", "--warmup", "1", "--windows", "1", "--window-steps", "1",
    )  # fmt: skip
    (table,) = markdown_tables(out)
    assert [row["path"] for row in table] == [
        "reference", "vanilla", "dtd", "vanilla+compile", "dtd+compile"
    ]  # fmt: skip
    assert table[0]["speed-up vs reference"] == "1.00x"
    for row in table:
        assert number(row["images/s"]) > 0 and 0 < number(row["MFU (measured float32 peak)"]) < 100, row
    flops = re.search(r"([\d.]+) GFLOP per training image \(analytic 3 x forward: ([\d.]+)\)", out)
    measured, analytic = map(float, flops.groups())
    assert measured == pytest.approx(analytic, rel=0.02)
    assert re.search(r"dtd step time vs vanilla's .*eager: [-+]?[\d.]+ %", out)


def test_sample_throughput_matches_the_reference_loop():
    out = run_benchmark(
        "sample_throughput.py", "--device", "cpu", "--tiny", "--rounds", "1", "--timed-steps", "2"
    )
    (table,) = markdown_tables(out)
    paths = [(row["sampler"], row["path"]) for row in table]
    assert paths == [
        (sampler, path)
        for sampler in ("DDPM-250", "Euler-40")
        for path in ("reference", "project", "project+compile")
    ]
    for row in table:
        assert number(row["images/s"]) > 0, row
        if row["path"] != "reference":
            # fp32 on both sides: one guided call on a doubled batch equals two calls up to rounding.
            assert number(row["rel. diff vs reference"]) < 1e-5, row


def test_kl_throughput_reports_the_requested_problem():
    out = run_benchmark(
        "kl_throughput.py", "--num-samples", "32", "--num-data", "24", "--dim", "48",
        "--num-timesteps", "100", "--repeats", "1",
    )  # fmt: skip
    (table,) = markdown_tables(out)
    (row,) = table
    assert (row["M"], row["L"], row["D"], row["pairs"]) == ("32", "24", "48", "99")
    assert number(row["median time (s)"]) > 0 and 0 < number(row["% of peak"]) < 100


def test_strategy_overhead_times_every_strategy_against_vanilla():
    out = run_benchmark(
        "strategy_overhead.py", "--batch", "4", "--image-size", "8", "--repeats", "2", "--warmup", "1"
    )
    (table,) = markdown_tables(out)
    assert {row["strategy"] for row in table} == {
        "vanilla", "dtd", "anti_cl", "naive_cl", "clts", "speed", "min_snr", "p2", "logit_normal",
        "edm_lognormal",
    }  # fmt: skip
    vanilla = next(row for row in table if row["strategy"] == "vanilla")
    assert number(vanilla["ratio to vanilla"]) == 1.0


def test_optimizer_step_compares_the_three_adamw_implementations():
    out = run_benchmark("optimizer_step.py", "--repeats", "2", "--steps", "2")
    (table,) = markdown_tables(out)
    assert [row["implementation"] for row in table] == ["for-loop", "foreach", "fused"]
    assert table[0]["ratio to for-loop"] == "1.00"


def test_memory_estimate_counts_weights_optimiser_state_and_activations():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import memory_estimate
    finally:
        sys.path.remove(str(BENCHMARKS))
    small, small_total, n_params = memory_estimate.estimate("DiT-tiny/4", 64, tiny=True)
    large, large_total, _ = memory_estimate.estimate("DiT-tiny/4", 128, tiny=True)
    # Fused AdamW keeps a float32 step count per parameter tensor beside the two moments.
    n_tensors = len(list(memory_estimate.spec_for("DiT-tiny/4", True).build().parameters()))
    for parts, total in ((small, small_total), (large, large_total)):
        assert sum(parts.values()) == total
        # fp32 weights and their fp32 EMA copy (plus the position-embedding buffers), AdamW's two moments.
        assert 8 * n_params <= parts["parameters + EMA"] < 8.05 * n_params
        assert parts["optimiser state"] == 8 * n_params + 4 * n_tensors
        assert 0 < parts["gradients"] <= 4 * n_params
    # What the batch changes is the activations, in proportion.
    assert large["activations"] / small["activations"] == pytest.approx(2.0, rel=0.1)
    assert large["parameters + EMA"] == small["parameters + EMA"]


def test_threads_per_job_compares_oversubscribed_and_granted_jobs():
    out = run_benchmark(
        "threads_per_job.py", "--jobs", "2", "--model", "DiT-tiny/4", "--steps", "3", "--rounds", "1"
    )
    (table,) = markdown_tables(out)
    assert [row["threads per job"] for row in table][0] == "every core"
    assert table[0]["speed-up vs every core"] == "1.00x"
    assert all(number(row["steps/s per job"]) > 0 for row in table)


def _settling_rows(out: str) -> dict[tuple[str, int], str]:
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) == 6 and cells[1].isdigit():
            rows[cells[0], int(cells[1])] = cells[2]
    return rows


def test_expert_settling_reads_the_known_curves():
    """The calibration's synthetic curves: the fit reads 40 + 100 ln 100 on the noiseless decay at every
    run length and near it under 10% noise, and the flat curve at its start; the decrease band (with
    start at 10% of each length) reads the noisy flat curve as never settled."""
    lengths = ["--lengths", "800", "2400"]
    fit = _settling_rows(
        run_benchmark("expert_settling.py", "--synthetic", "--band", "fit", "--start", "40", *lengths)
    )
    for length in (800, 2400):
        assert float(fit["exp_tau100_noise0", length]) == pytest.approx(40 + 100 * 4.60517, abs=1)
        assert float(fit["exp_tau100_noise0.1", length]) == pytest.approx(500.5, rel=0.15)
        assert float(fit["flat_noise0.1", length]) == 40
    band = _settling_rows(run_benchmark("expert_settling.py", "--synthetic", *lengths))
    assert band["flat_noise0.1", 800] == band["flat_noise0.1", 2400] == "NaN"


def test_floor_sets_compares_random_and_class_matched_sets():
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("floor_sets", BENCHMARKS / "floor_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    features = rng.standard_normal((10, 8))[labels] * 3 + rng.standard_normal((1000, 8))
    readings = module.floor_readings(features, labels, num_samples=100, draws=20, seed=0)
    assert {kind: len(values) for kind, values in readings.items()} == {"random": 20, "class_matched": 20}
    assert readings["class_matched"].mean() < readings["random"].mean()
    assert readings["class_matched"].std() < readings["random"].std()
    assert "--num-samples" in run_benchmark("floor_sets.py", "--help")
