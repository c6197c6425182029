"""The full-scale runbook (``bench/runbook.py``) on the CPU at tiny sizes, its results file, and chapter 12's
reading of such files.

On a GPU the runbook writes ``bench/results/<gpu>.json``; chapter 12 prints what those files hold and says that no
GPU result is recorded when there is none. ``--quick`` runs the same code path on the CPU at tiny sizes, so these
tests check every section, the file's format, the budget, the refusals, and the chapter's reader, without a GPU.
Timings are never asserted, only that they are recorded.
"""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

from vanishing import precision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tools"))
runbook = importlib.import_module("runbook")
from cell_slice import slice_cells  # noqa: E402

while str(ROOT / "tools") in sys.path:  # tools/kernels.py must not shadow the `kernels` package
    sys.path.remove(str(ROOT / "tools"))

CHAPTER = ROOT / "chapters" / "12_hardware.ipynb"
READER = "# GPU runs recorded by bench/runbook.py"  # first line of chapter 12's cell that reads bench/results/
NO_RESULT = "No GPU result is recorded yet"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[dict, str]:
    """One ``--quick`` run with chapter 03's heaviest experiment (the cheapest): its results file and stdout."""
    out = tmp_path_factory.mktemp("runbook") / "run.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "runbook.py"), "--quick", "--out", str(out),
                           "--chapters", "03"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(out.read_text()), done.stdout


def test_quick_run_records_the_machine_and_each_section(quick_run):
    record, stdout = quick_run
    assert record["schema"] == 1 and record["quick"] is True and record["complete"] is True
    m = record["machine"]
    assert m["device_type"] == "cpu" and m["torch"] == torch.__version__ and m["device"] == m["cpu"] and m["cpu"]
    assert m["capability"] is None and m["driver"] is None  # a CPU run names no GPU
    assert list(record["sections_s"]) == ["matmul", "training_step", "underflow", "grad_scaler"]
    for name in record["sections_s"]:
        assert f"{name}: " in stdout
    assert record["elapsed_s"] >= sum(record["sections_s"].values())


def test_quick_run_matmul_covers_every_format_and_size(quick_run):
    rows = quick_run[0]["matmul"]
    assert [(r["format"], r["n"]) for r in rows] == [(f, n) for f in runbook.MATMUL_FORMATS for n in (32, 64)]
    assert all(r["tflops"] > 0 for r in rows)


def test_quick_run_times_a_training_step_on_the_cpu_only(quick_run):
    (row,) = quick_run[0]["training_step"]
    assert row["size"] == "tiny" and row["cpu_threads"] == 1 and row["cpu_ms"] > 0
    assert "speedup" not in row  # no second device to compare with


def test_quick_run_underflow_matches_the_formats(quick_run):
    u = quick_run[0]["underflow"]
    # 0.25^n: the counts chapter 12 derives (first zero 13, 67, 75, 538 in float16, bfloat16, float32, float64)
    zeros = {r["format"]: r["cpu"]["first_zero"] for r in u["powers"]}
    assert zeros == {name: precision.underflow_steps(0.25, fmt=name)[1] for name in precision.FORMATS}
    assert [zeros[n] for n in ("float16", "bfloat16", "float32", "float64")] == [13, 67, 75, 538]
    assert all(set(r) == {"format", "cpu"} for r in u["powers"])  # the CPU is the device: one column
    # every probe's exact product is subnormal in its format, and the CPU keeps subnormals in matrix products
    assert [(r["format"], r["what"]) for r in u["probes"]] == [(f, w) for f, w, _, _ in runbook.SUBNORMAL_PROBES]
    for r in u["probes"]:
        fmt = "float32" if r["format"] in ("tf32", "float8_e4m3fn") and r["what"] == "subnormal product" else r["format"]
        fmt = "float32" if fmt == "tf32" else fmt
        info = precision.format_info(fmt)
        assert 0 < r["exact"] < info["smallest_normal"], r
        assert r["verdict"] == "kept" and r["got"] == r["exact"], r
    # the 60-layer tiny chain: only float16 reaches an exact zero; TF32 changes nothing on a CPU
    first = {r["format"]: r["cpu"] for r in u["chain_first_zero"]}
    assert list(first) == [*precision.COMPUTED, "tf32"]
    assert isinstance(first["float16"], int) and first["float16"] < u["chain"]["depth"]
    assert first["tf32"] == first["float32"]
    # the check that TF32 really ran: never on a CPU, at the probes' size and the network's width
    assert u["tf32_used"] == {"16": False, "8": False}


def test_tf32_check_sees_float32_precision_on_the_cpu():
    # 1 + 2^-12 survives a float32 product; the check reads that as "TF32 did not run"
    assert runbook.tf32_used(8, torch.device("cpu")) is False


def test_quick_run_grad_scaler_keeps_more_layers_alive(quick_run):
    runs = {(r["autocast"], r["init_scale"]): r for r in quick_run[0]["grad_scaler"]["runs"]}
    plain, scaled, bf16 = runs[("float16", None)], runs[("float16", 2.0**16)], runs[("bfloat16", None)]
    assert plain["scale_after"] is None and scaled["scale_after"] == 2.0**16  # no overflow: the scale stays
    assert scaled["zero_gradients"] < plain["zero_gradients"] and scaled["first_zero"] > plain["first_zero"]
    assert bf16["zero_gradients"] == 0 and bf16["first_zero"] is None
    assert {r["device"] for r in runs.values()} == {"cpu"}


def test_quick_run_executes_the_chapters_heaviest_experiment(quick_run):
    (row,) = quick_run[0]["chapters"]
    assert row["chapter"] == "03_dynamical_system" and row["status"] == "ok" and row["error"] is None
    assert row["scale"] == "small" and row["device"] == "cpu"
    assert row["cell"] == runbook.HEAVIEST["03_dynamical_system"][0]
    # the sizes are the chapter's own, read from its kernel after the setup cell ran
    assert row["sizes"] and all(isinstance(v, int) for v in row["sizes"].values())
    assert row["cell_s"] > 0 and row["peak_gpu_gib"] is None and row["output"].strip()


def test_a_chapter_past_the_budget_is_skipped_not_run(tmp_path, monkeypatch):
    # the hardware sections (measured in the fixture's run) are replaced by stand-ins: only the budget is tested here
    for name in ("matmul_throughput", "training_steps", "underflow", "grad_scaler"):
        monkeypatch.setattr(runbook, name, lambda *args, name=name: name)
    monkeypatch.setattr(runbook, "run_chapter", lambda *args, **kwargs: pytest.fail("a chapter ran past the budget"))
    out = tmp_path / "run.json"
    assert runbook.main(["--quick", "--out", str(out), "--budget", "0", "--chapters", "03", "08"]) == 0
    record = json.loads(out.read_text())
    assert [row["chapter"] for row in record["chapters"]] == ["03_dynamical_system", "08_residual"]  # cheapest first
    for row in record["chapters"]:
        assert row["status"] == "skipped" and row["limit_s"] == 0 and "no time left" in row["note"]
    assert record["complete"] is True and record["matmul"] == "matmul_throughput"  # the sections still ran


def test_a_chapter_past_its_limit_times_out_within_the_margin():
    # chapter 05's heaviest experiment takes about a minute at small scale: a 6 s limit stops it
    row = runbook.run_chapter(ROOT / "chapters" / "05_activations.ipynb", scale="small", device="cpu", limit=6)
    assert row["status"] == "timeout" and row["limit_s"] == 6
    assert row["seconds"] < 6 + runbook.CHAPTER_MARGIN_S, row["seconds"]  # stopping the kernel is in the margin


def test_a_full_run_that_times_out_falls_back_to_small(monkeypatch):
    calls = []

    def fake_run(path, *, scale, device, limit):
        calls.append((path.stem, scale, round(limit)))
        return {"chapter": path.stem, "scale": scale, "limit_s": limit, "status": "timeout" if scale == "full" else "ok"}

    monkeypatch.setattr(runbook, "run_chapter", fake_run)
    left = iter([100.0, 60.0])  # seconds left before the full run, and after it
    rows = runbook.run_chapter_or_smaller("08_residual", scale="full", device="cuda", chapters_left=2,
                                          seconds_left=lambda: next(left), min_s=5.0)
    margin = runbook.CHAPTER_MARGIN_S
    assert calls == [("08_residual", "full", round(50 - margin)), ("08_residual", "small", round(30 - margin))]
    assert [r["status"] for r in rows] == ["timeout", "ok"] and rows[1]["fallback_for"] == "full"
    # a small run that times out is not retried, and a share below the minimum is skipped, not run
    calls.clear()
    rows = runbook.run_chapter_or_smaller("08_residual", scale="small", device="cpu", chapters_left=1,
                                          seconds_left=lambda: 3.0, min_s=5.0)
    assert calls == [] and rows[0]["status"] == "skipped"


@pytest.mark.parametrize(
    "argv, word",
    [
        (["--quick"], "--quick needs --out"),
        (["--quick", "--out", str(runbook.RESULTS / "cpu.json")], "GPU results only"),
        (["--quick", "--out", "x.json", "--chapters", "99"], "unknown"),
    ],
)
def test_refusals(argv, word, capsys):
    with pytest.raises(SystemExit) as exc:
        runbook.main(argv)
    assert exc.value.code == 2 and word in capsys.readouterr().err
    assert not (runbook.RESULTS / "cpu.json").exists() and not Path("x.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_real_run_refuses(capsys):
    with pytest.raises(SystemExit):
        runbook.main([])
    assert "no CUDA device here" in capsys.readouterr().err


def test_every_chapter_names_one_heaviest_cell():
    # every notebook with a `full` scale has its heaviest experiment in the runbook, found by a unique first line
    chapters = {p.stem for p in (ROOT / "chapters").glob("*.ipynb")
                if '"full"' in next(c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")}
    assert set(runbook.HEAVIEST) == chapters
    for stem in runbook.HEAVIEST:
        code, index = runbook.heaviest_cells(ROOT / "chapters" / f"{stem}.ipynb")
        assert code[index].source.startswith(runbook.HEAVIEST[stem][0]) and index > 0  # never the setup cell


def test_slug():
    assert runbook.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert runbook.slug("  Tesla V100-SXM2-16GB ") == "tesla-v100-sxm2-16gb"


# ----------------------------------------------------------------------------------------------------------
# Chapter 12 reads bench/results/
# ----------------------------------------------------------------------------------------------------------

def as_gpu_run(record: dict) -> dict:
    """The quick CPU record in the shape the runbook writes on a CUDA machine (a test fixture, never a result):
    the machine named, ``cuda`` columns beside the CPU's, a ``cuda_ms`` and a speed-up per training step."""
    run = copy.deepcopy(record)
    run["quick"] = False
    run["machine"].update(device_type="cuda", device="Test GPU", capability="9.0", memory_gib=79.1,
                          driver="000.00", cuda="12.8")
    for row in run["training_step"]:
        row.update(cuda_ms=row["cpu_ms"] / 10, speedup=10.0)
    for row in run["underflow"]["powers"] + run["underflow"]["chain_first_zero"]:
        row["cuda"] = row["cpu"]
    run["grad_scaler"]["runs"] += [dict(r, device="cuda") for r in run["grad_scaler"]["runs"]]
    return run


def chapter_reader_output(tmp_path: Path, results: dict[str, list[dict]]) -> dict[str, str]:
    """Run chapter 12's reader cell (after the setup cell and what it depends on) once per case, each in a
    ``chapters/`` folder beside a ``bench/results/`` holding that case's files; return each case's text."""
    code = [c for c in nbformat.read(CHAPTER, as_version=4).cells if c.cell_type == "code"]
    (target,) = [i for i, c in enumerate(code) if c.source.startswith(READER)]
    cells = [nbformat.v4.new_code_cell(s) for _, s in slice_cells([c.source for c in code[: target + 1]], target)]
    cases = {}
    for case, files in results.items():
        folder = tmp_path / case
        (folder / "chapters").mkdir(parents=True)
        (folder / "bench" / "results").mkdir(parents=True)
        for i, run in enumerate(files):
            (folder / "bench" / "results" / f"run{i}.json").write_text(json.dumps(run))
        cases[case] = len(cells)
        cells += [nbformat.v4.new_code_cell(f"import os\nos.chdir({str(folder / 'chapters')!r})"),
                  nbformat.v4.new_code_cell(code[target].source)]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(CHAPTER.parent)}}).execute()
    return {case: runbook._text(nb.cells[i + 1]) for case, i in cases.items()}


def test_chapter_12_prints_recorded_gpu_runs_and_says_when_there_is_none(quick_run, tmp_path):
    record = quick_run[0]
    gpu = as_gpu_run(record)
    cut_short = {k: v for k, v in gpu.items() if k in ("schema", "quick", "machine", "matmul")}
    text = chapter_reader_output(tmp_path, {"none": [], "cpu only": [record], "gpu": [gpu, record],
                                            "cut short": [cut_short]})
    # No file, or only a CPU run: the chapter says so and prints no table.
    for case in ("none", "cpu only"):
        assert NO_RESULT in text[case] and "TFLOPS" not in text[case], text[case]
    # A GPU run: the machine named, every section's table, the measured format ratios, each chapter's row.
    out = text["gpu"]
    assert NO_RESULT not in out
    assert "Test GPU (compute capability 9.0, 79.1 GiB), driver 000.00" in out and "CUDA 12.8" in out
    assert out.count("Test GPU") == 1  # the CPU run beside it is not reported
    assert "(run cut short)" not in out
    for name in runbook.MATMUL_FORMATS:
        assert name in out
    assert "measured at n=64: tf32/float32 = " in out and "bfloat16/float32 = " in out
    assert "10x" in out  # the training step's speed-up
    assert "0.25^n first zero" in out and "subnormal product" in out and "kept" in out
    assert "TF32 really used in the float32 products that allowed it: n=16 no, n=8 no" in out
    assert "60-layer net: first zero below the output" in out
    assert "GradScaler init" in out and "65536.0" in out
    assert "03_dynamical_system" in out and runbook.HEAVIEST["03_dynamical_system"][0] in out
    # A run cut short after its first section: named as such, with what it measured.
    assert "(run cut short)" in text["cut short"] and "matmul TFLOPS" in text["cut short"]
    assert "training step" not in text["cut short"]
