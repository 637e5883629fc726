"""One side of one benchmark, driven over stdin/stdout by bench.harness (see its docstring).

Run as `python -m bench.worker '<json spec>'`; the spec names the benchmark ("pretrain",
"inference", "decode_lexicon_free", "decode_lexicon", "prepare", "products"), the side ("ours", "ref",
...) and their settings.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time


def rss_mb() -> float:
    """Current resident memory of this process, MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _children_cpu() -> float:
    """CPU seconds of this process's children: finished ones (getrusage) plus live ones (/proc),
    so that work done in worker pools is counted too."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:  # fields[1] is the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """A convolution's gradients, each as much work as the forward: torch's own formula counts the
    weight gradient of a grouped convolution `groups` times over (160 GFLOP instead of 19 for
    BASE's positional convolution in one pretraining step)."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter():
    """FlopCounterMode with the grouped-convolution gradient counted as above."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def build(spec: dict):
    """The callable that runs one repetition, plus facts to report when ready."""
    bench, side = spec["bench"], spec["side"]
    if bench == "products":
        from bench.products import build_products

        return build_products(spec["shapes"], spec["dtype"], spec["warmup"]), {}
    if bench == "pretrain":
        import numpy as np

        from bench import pretrain

        wav = np.load(spec["wav"])
        step = pretrain.build(side, wav, spec["precision"], spec["layerdrop"], spec["fused_adamw"], spec["size"])
        return step, {}
    if bench == "inference":
        from bench import inference

        return inference.build(side, spec["wav"], spec["size"]), {}
    if bench == "decode_lexicon_free":
        from bench import decode_lexicon_free

        return decode_lexicon_free.build(side, spec), {}
    if bench == "decode_lexicon":
        from bench import decode_lexicon

        return decode_lexicon.build(side, spec), {}
    if bench == "prepare":
        from bench import prepare

        return prepare.build(side, spec), {}
    raise SystemExit(f"unknown benchmark {bench!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not break the protocol
    if spec["bench"] in ("products", "pretrain", "inference"):
        # torch only where it is used: the prepare and decode commands do not import it, and a
        # process holding it forks its worker pools several times slower
        _set_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if spec.get("keep_freed_memory"):  # what the w2vtk command does at start
        from w2vtk.cpu.host_memory import keep_freed_memory

        keep_freed_memory()
    if spec.get("huge_pages"):  # and its inference commands
        from w2vtk.cpu.host_memory import back_large_tensors_with_huge_pages

        back_large_tensors_with_huge_pages()
    base_rss = rss_mb()
    run, facts = build(spec)
    answer = {"ready": True, "rss_after_import_mb": base_rss, "rss_ready_mb": rss_mb(), **facts}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    timed_peak = None
    for line in sys.stdin:
        command = line.strip()
        if command in ("run", "warmup"):
            # the /proc scan for children's CPU stays outside both clocks: on a 0.1 s repetition
            # its few milliseconds would shrink every ratio towards 1
            children0 = _children_cpu()
            c0, t0 = time.process_time(), time.perf_counter()
            # an untimed warm-up repetition may do more (transformers' sides try each attention kernel)
            result = getattr(run, "warmup", run)() if command == "warmup" else run()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            cpu += _children_cpu() - children0
            result = result if isinstance(result, dict) else {}
            answer = {"wall": wall, "cpu": cpu, **result}
        elif command == "flops":
            # the counting repetition runs under a dispatch mode that allocates differently: the peak
            # memory reported is that of the timed work before it
            timed_peak = timed_peak or peak_rss_mb()
            counter = flop_counter()
            with counter:
                run()
            answer = {"flops": counter.get_total_flops()}
        elif command == "quit":
            if hasattr(run, "close"):  # worker pools of the side
                run.close()
            out.write(json.dumps({"peak_rss_mb": timed_peak or peak_rss_mb()}) + "\n")
            out.flush()
            return
        else:
            answer = {"error": f"unknown command {command!r}"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
