"""Throughput of the FlexiMo encoder against a straightforward implementation.

The straightforward implementation shares the model's weights and blocks. On
every call it does what the reference FlexiMo code does: it regenerates the
patch kernel from the wavelengths, rebuilds the PI-resize matrix from 256
bicubic basis resizes, takes its pseudo-inverse and resizes the kernel and
the position embedding. For bfloat16 it wraps the call in ``torch.autocast``. Ours reuses cached kernels, pinv matrices, position
embeddings and bfloat16 weights.

ViT-Base (embed 768, depth 12, 12 heads), 12 Sentinel-2 bands, CPU, batch 1
and 8, patch 16 on 224 px and patch 32 on 448 px (both 14 x 14 tokens).
The results table replaces the "Model throughput" section of
docs/benchmarks.md (other sections are kept).

Run: ``.venv/bin/python benchmarks/model_throughput.py`` (about 3-6 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.model import MODEL_PRESETS, FlexiMo, bfloat16_available, build_model, resize_pos_embed, token_grid
from pipeline.model.linear import PreparedLinear
from pipeline.model.patch_embed import KERNEL_SCALE, wavelength_embedding

S2_WAVELENGTHS_UM = [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19]
CONFIGS = [(1, 224, 16), (1, 448, 32), (8, 224, 16), (8, 448, 32)]  # (batch, pixels, patch size)
SECTION_TITLE = "## Model throughput"
DOCS_PATH = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def straightforward_forward(
    model: FlexiMo, x: torch.Tensor, wavelengths_um: Sequence[float], patch_size: int
) -> torch.Tensor:
    """Classifier logits computed the straightforward way, regenerating everything per call."""
    embed = model.patch_embed
    base = embed.kernel_size
    band_embeddings = embed.fclayer(wavelength_embedding(torch.tensor(list(wavelengths_um)), embed.wavelength_dim))
    weights, bias = embed.weight_generator(band_embeddings)
    kernel = weights.view(len(wavelengths_um), base, base, embed.embed_dim).permute(3, 0, 1, 2) * KERNEL_SCALE
    bias = bias * KERNEL_SCALE
    if patch_size != base:
        rows = []
        for index in range(base * base):
            basis = torch.zeros(base * base)
            basis[index] = 1.0
            resized = F.interpolate(
                basis.view(1, 1, base, base), size=(patch_size, patch_size), mode="bicubic", antialias=True
            )
            rows.append(resized.flatten())
        pinv = torch.linalg.pinv(torch.stack(rows))
        kernel = (kernel.reshape(-1, base * base) @ pinv.T).reshape(*kernel.shape[:2], patch_size, patch_size)

    tokens = F.conv2d(x, kernel, bias, stride=patch_size, padding=1).flatten(2).transpose(1, 2)
    grid = token_grid((x.shape[-2], x.shape[-1]), patch_size)
    pos_embed = resize_pos_embed(model.pos_embed, grid)
    cls_token = (model.cls_token + pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    tokens = torch.cat([cls_token, tokens + pos_embed[:, 1:]], dim=1)
    for block in model.blocks:
        tokens = block(tokens)
    assert model.fc_norm is not None and model.head is not None
    return model.head(model.fc_norm(tokens[:, 1:].mean(dim=1))).float()


def encoder_gflop(model: FlexiMo, size: int, patch_size: int, bands: int) -> float:
    """Return the multiply-add FLOPs (x2) of one image through patch projection and blocks, in GFLOP."""
    config = model.config
    grid = token_grid((size, size), patch_size)
    patches = grid[0] * grid[1]
    tokens = patches + 1
    dim = config.embed_dim
    projection = 2 * patches * dim * bands * patch_size * patch_size
    linear = 2 * tokens * dim * dim * (3 + 1 + 2 * config.mlp_ratio)
    attention = 2 * 2 * tokens * tokens * dim
    return (projection + config.depth * (linear + attention)) / 1e9


def matmul_gflops(dtype: torch.dtype, size: int = 4096, repeats: int = 3) -> dict[str, float]:
    """Return the best GFLOP/s of a ``size`` x ``size`` product in ``dtype`` per CPU GEMM back end.

    ``"mm"`` is ``torch.mm`` (MKL for float32, oneDNN for bfloat16) and
    ``"onednn"`` a prepacked oneDNN linear; the larger one is the peak.
    """
    a = torch.randn(size, size, dtype=dtype)
    layer = torch.nn.Linear(size, size, bias=False)
    weight_t = layer.weight.detach().to(dtype).T.contiguous()
    prepared = PreparedLinear(layer, dtype, torch.device("cpu"))
    rates = {}
    for name, run in (("mm", lambda: a @ weight_t), ("onednn", lambda: prepared(a))):
        run()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        rates[name] = 2 * size**3 / best / 1e9
    return rates


def time_calls(runners: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Return the median seconds per call of each runner, interleaving runners so load drifts hit all alike."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in runners.values():
            run()
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def run_benchmark(repeats_batch1: int, repeats_batch8: int) -> tuple[list[dict[str, float]], dict[str, object]]:
    """Measure every configuration; return one row per configuration and the run's environment."""
    torch.manual_seed(0)
    model = build_model(MODEL_PRESETS["vit_base"].replace(num_classes=10), seed=0)
    waves = S2_WAVELENGTHS_UM
    use_bf16 = bfloat16_available("cpu")
    environment: dict[str, object] = {
        "load_before": os.getloadavg(),
        "matmul_fp32": matmul_gflops(torch.float32),
        "matmul_bf16": matmul_gflops(torch.bfloat16) if use_bf16 else {"mm": float("nan")},
    }
    environment["peak_fp32"] = max(environment["matmul_fp32"].values())  # type: ignore[attr-defined]
    environment["peak_bf16"] = max(environment["matmul_bf16"].values())  # type: ignore[attr-defined]

    rows = []
    for batch, size, patch_size in CONFIGS:
        x = torch.randn(batch, len(waves), size, size, generator=torch.Generator().manual_seed(size))
        def ours_fp32_unpacked() -> torch.Tensor:
            # Caches only: the blocks run through their nn.Linear modules.
            model.prepare_linears = False
            try:
                return model(x, wavelengths_um=waves, patch_size=patch_size)
            finally:
                model.prepare_linears = True

        runners: dict[str, Callable[[], torch.Tensor]] = {
            "naive_fp32": lambda: straightforward_forward(model, x, waves, patch_size),
            "ours_fp32": lambda: model(x, wavelengths_um=waves, patch_size=patch_size),
            "ours_fp32_unpacked": ours_fp32_unpacked,
        }
        if use_bf16:

            def naive_bf16() -> torch.Tensor:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return straightforward_forward(model, x, waves, patch_size)

            runners["naive_bf16"] = naive_bf16
            runners["ours_bf16"] = lambda: model(x, wavelengths_um=waves, patch_size=patch_size, precision="bfloat16")
        seconds = time_calls(runners, repeats_batch1 if batch == 1 else repeats_batch8)

        with torch.inference_mode():
            exact = model(x, wavelengths_um=waves, patch_size=patch_size)
            reference = straightforward_forward(model, x, waves, patch_size)
            fast = model(x, wavelengths_um=waves, patch_size=patch_size, precision="bfloat16") if use_bf16 else exact
        gflop = encoder_gflop(model, size, patch_size, len(waves)) * batch
        row = {"batch": batch, "size": size, "patch_size": patch_size, "gflop": gflop}
        row.update({f"{name}_ips": batch / value for name, value in seconds.items()})
        row["fp32_vs_naive_abs"] = (exact - reference).abs().max().item()
        row["bf16_abs"] = (fast - exact).abs().max().item()
        row["bf16_rel"] = row["bf16_abs"] / exact.abs().max().item()
        row["ours_fp32_peak_fraction"] = gflop / seconds["ours_fp32"] / environment["peak_fp32"]  # type: ignore[operator]
        if use_bf16:
            row["ours_bf16_peak_fraction"] = gflop / seconds["ours_bf16"] / environment["peak_bf16"]  # type: ignore[operator]
        rows.append(row)
        print(_format_row(row), file=sys.stderr)

    environment["load_after"] = os.getloadavg()
    return rows, environment


def _format_row(row: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in row.items())


def _rates(rates: dict[str, float]) -> str:
    return " / ".join(f"{name} {value:.0f}" for name, value in rates.items())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render_section(rows: list[dict[str, float]], environment: dict[str, object], command: str) -> str:
    """Return the markdown section with the command, the machine and the results table."""
    load_before = ", ".join(f"{v:.2f}" for v in environment["load_before"])  # type: ignore[attr-defined]
    load_after = ", ".join(f"{v:.2f}" for v in environment["load_after"])  # type: ignore[attr-defined]
    lines = [
        SECTION_TITLE,
        "",
        "FlexiMo ViT-Base encoder (embed 768, depth 12, 12 heads, classifier head), 12 Sentinel-2 bands, "
        "seeded random weights, `torch.inference_mode`, CPU. *naive*: the same weights and blocks, but the "
        "patch kernel, the PI-resize pinv matrix (256 bicubic basis resizes + `torch.linalg.pinv`) and the "
        "position embedding are rebuilt on every call, as the reference FlexiMo code does; its bfloat16 run "
        "wraps the call in `torch.autocast`. *ours*: `FlexiMo.__call__` with its caches and the blocks' "
        "linear layers prepacked for oneDNN (bfloat16 copies for bfloat16). *ours, caches only*: the same "
        "with `prepare_linears = False`, so the blocks use `nn.Linear` (MKL for float32) like naive. "
        "Throughput is the median over interleaved repeats, in images/s.",
        "",
        f"- Command: `{command}`",
        f"- Machine: {_cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}",
        f"- Load average (1, 5, 15 min) before: {load_before}; after: {load_after}. Other processes on the "
        "machine distort timings; ratios from one interleaved run are more stable than absolute rates.",
        "- Matmul rate measured (4096 x 4096, GFLOP/s): float32 "
        f"{_rates(environment['matmul_fp32'])}, bfloat16 {_rates(environment['matmul_bf16'])}. "
        "The peak is the larger of each pair.",
        "",
        "| batch | px | patch | naive fp32 | ours fp32, caches only | ours fp32 | ours / naive fp32 | "
        "naive bf16 | ours bf16 | ours bf16 / naive fp32 | ours bf16 / naive bf16 | fp32 % of peak | "
        "bf16 % of peak | bf16 max abs err | bf16 max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        naive_bf16 = row.get("naive_bf16_ips", float("nan"))
        ours_bf16 = row.get("ours_bf16_ips", float("nan"))
        lines.append(
            f"| {row['batch']} | {row['size']} | {row['patch_size']} | {row['naive_fp32_ips']:.2f} | "
            f"{row['ours_fp32_unpacked_ips']:.2f} ({row['ours_fp32_unpacked_ips'] / row['naive_fp32_ips']:.2f}x) | "
            f"{row['ours_fp32_ips']:.2f} | **{row['ours_fp32_ips'] / row['naive_fp32_ips']:.2f}x** | "
            f"{naive_bf16:.2f} | {ours_bf16:.2f} | **{ours_bf16 / row['naive_fp32_ips']:.2f}x** | "
            f"{ours_bf16 / naive_bf16:.2f}x | {100 * row['ours_fp32_peak_fraction']:.0f}% | "
            f"{100 * row.get('ours_bf16_peak_fraction', float('nan')):.0f}% | {row['bf16_abs']:.2e} | "
            f"{row['bf16_rel']:.2e} |"
        )
    max_fp32_gap = max(row["fp32_vs_naive_abs"] for row in rows)
    lines += [
        "",
        f"float32 logits of ours and naive agree within {max_fp32_gap:.1e} (max abs). bfloat16 errors are "
        "the logits' max abs difference from our float32 logits, and that divided by the max abs float32 "
        "logit. FLOPs count the patch projection and the blocks (2 per multiply-add).",
        "",
        "Where the speed comes from:",
        "",
        "- The caches (column *caches only*) remove the per-call kernel generation and, at patch 32, the "
        "pinv matrix and the (9216 x 256) x (256 x 1024) kernel resize. That work does not grow with the "
        "batch, and the blocks still dominate, so this gain alone stays modest.",
        "- Prepacked oneDNN GEMMs make up most of the rest: `F.linear` reorders the weight on every call and "
        "goes through MKL for float32, which the `mm` / `onednn` matmul rates above compare on this CPU.",
        "- In bfloat16 the naive run casts all 86 M weights on every call under `torch.autocast`; ours "
        "keeps bfloat16 copies. LayerNorms and the residual stream stay float32 in both.",
        "- Batch 1 (197 tokens) uses a smaller share of the peak than batch 8: the element-wise work "
        "(LayerNorm, GELU, softmax, residual adds) and per-op threading overhead weigh more there.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str, path: Path = DOCS_PATH) -> None:
    """Replace this benchmark's section in ``path`` (or append it), keeping the other sections."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION_TITLE), None)
    if start is None:
        new_text = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        kept_after = "\n".join(lines[end:])
        new_text = "\n".join(lines[:start]).rstrip("\n") + "\n\n" + section
        if kept_after:
            new_text = new_text.rstrip("\n") + "\n\n" + kept_after + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_text.lstrip("\n"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats-batch1", type=int, default=3, help="timed calls per runner at batch 1")
    parser.add_argument("--repeats-batch8", type=int, default=2, help="timed calls per runner at batch 8")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-write", action="store_true", help=f"print the section instead of updating {DOCS_PATH}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows, environment = run_benchmark(args.repeats_batch1, args.repeats_batch8)
    command = "python benchmarks/model_throughput.py " + " ".join(sys.argv[1:])
    section = render_section(rows, environment, command.strip())
    if args.no_write:
        print(section)
    else:
        write_section(section)
        print(section)


if __name__ == "__main__":
    main()
