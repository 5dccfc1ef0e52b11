"""The text tables ``bench_torch.py`` prints from its rows (``bench_torch.run_size``)."""

from __future__ import annotations


def roof_table(rows) -> str:
    """Achieved GFLOP/s and GB/s of each framework's step against the measured peak."""
    lines = [f"{'nodes':>7} {'GFLOP':>7} {'XLA GFLOP':>9} {'GB':>6} {'peak GFLOP/s':>12} {'peak GB/s':>9}  "
             "framework: GFLOP/s (% peak) GB/s (% stream)"]
    for r in rows:
        cells = []
        for k, name in (("jax", "JAX"), ("torch", "PyTorch"), ("torchc", "PyTorch compiled")):
            if k + "_gflops" in r:
                cells.append(f"{name}: {r[k + '_gflops']:.1f} "
                             f"({100 * r[k + '_gflops'] / r['peak_gflops']:.1f}%) "
                             f"{r[k + '_gbs']:.2f} ({100 * r[k + '_gbs'] / r['peak_gbs']:.1f}%)")
        lines.append(f"{r['nodes']:>7} {r['step_gflop']:>7.1f} {r.get('xla_gflop', 0):>9.1f} {r['step_gb']:>6.2f} "
                     f"{r['peak_gflops']:>12.1f} {r['peak_gbs']:>9.1f}  " + "; ".join(cells))
    return "\n".join(lines)


def table(rows) -> str:
    head = (f"{'spots':>7} {'edges':>9} {'jax step':>10} {'torch step':>11} {'ratio':>6} "
            f"{'jax CLI':>9} {'torch CLI':>10} {'ratio':>6}  equal loss (jax / torch)  RSS")
    lines = [head]
    for r in rows:
        lines.append(f"{r['nodes']:>7} {r['edges']:>9} {r['jax_step_ms']:>8.0f}ms "
                     f"{r['torch_step_ms']:>9.0f}ms {r['step_ratio']:>6.2f} "
                     f"{r['jax_cli_ms']:>7.0f}ms {r['torch_cli_ms']:>8.0f}ms {r['cli_ratio']:>6.2f}"
                     f"  {str(r['equal_loss'] and r['cli_equal']):>5} ({r['loss_jax']:.4f} / "
                     f"{r['loss_torch']:.4f})  {r['peak_rss_gb']:.1f} GB  load {r.get('load', 0):.1f}")
        if "torch_compile_s" in r:
            lines.append(f"{'':>7} torch.compile: " + (
                f"step {r['torchc_step_ms']:.0f}ms, JAX ratio {r['torchc_ratio']:.2f} (compile "
                f"{r['torch_compile_s']:.0f}s)" if "torchc_step_ms" in r else
                f"failed ({r['torch_compile_error']})"))
    return "\n".join(lines)
