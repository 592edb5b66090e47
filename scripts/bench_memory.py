"""Peak memory of `python -m wdiv.analyze` on large generated checkpoints, against the Gram matrices.

Three cases, each written under --tmp (default: the system's temporary directory), analysed in a
fresh subprocess with the CLI's defaults, then deleted:
  a  eight 2048 x 32768 float32 matrices in one 2 GiB model.safetensors (the Gram side is the
     stored rows: W W^T, read a block of columns at a time)
  b  a sharded Llama-style float32 decoder (embeddings, q/k/v/o, gate/up/down, norms; --layers,
     --hidden, --ffn, --vocab)
  c  a bfloat16 checkpoint with a 32000 x 4096 embedding and --c-layers layers of 4096 x 11008
     MLP matrices (gate, up, down)
For each: the process's RSS after its imports (baseline: interpreter, numpy and the wdiv modules
the analysis runs; a safetensors analysis never imports torch, and the script says whether it
did), its peak RSS (Linux VmHWM, reset at the baseline), the largest analysed Gram matrix (M x M
float64), the analysis time, and the eigensolver floor: the Gram products and eigvalsh of the
same matrices from memory, one thread per core (single-threaded BLAS each, largest first), timed
in a second subprocess. Targets: (a) <= 0.75 GiB peak RSS, every case < 1.5 GiB.

    python scripts/bench_memory.py [--cases a b c] [--no-floor] [--tmp DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

GIB = 1 << 30

# The peak is the kernel's high-water mark of this process's own memory (VmHWM), reset after the
# imports; not getrusage's ru_maxrss, which keeps the parent's peak across fork and exec.
ANALYSE = r"""
import json, sys, time
import numpy, psutil
import wdiv.analysis_outputs, wdiv.spectral.api, wdiv.spectral.metrics
from wdiv.analyze import main
def hwm():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
base = psutil.Process().memory_info().rss
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset VmHWM to the current RSS
t = time.perf_counter()
code = main([sys.argv[1], "-q", "--force"])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t, "baseline": base, "peak": hwm(),
                  "torch": "torch" in sys.modules}))
"""

FLOOR = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from threadpoolctl import threadpool_limits
from wdiv.cpus import available_cpus
from wdiv.spectral.esd import gram_numpy
from wdiv.spectral.lapack import eigvalsh_inplace
from wdiv.spectral.weights import open_weights, select_layers, to_matrices
src = open_weights(sys.argv[1])
arrays = [np.asarray(m, dtype=np.float32) for s in select_layers(src) for m in to_matrices(s, src.tensor(s.key))]
arrays.sort(key=lambda a: -a.size * min(a.shape))
t = time.perf_counter()
with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(available_cpus()) as pool:
    list(pool.map(lambda a: eigvalsh_inplace(gram_numpy(a)), arrays))
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], make, dtype_name: str) -> Path:
    """A safetensors file written one tensor at a time (the generator never holds the model)."""
    size = {"F32": 4, "BF16": 2}[dtype_name]
    header, offset = {}, 0
    for key, shape in shapes.items():
        n = size
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for key, shape in shapes.items():
            fh.write(make(key, shape).contiguous().view(torch.uint8).numpy().data)
    return path


def case_a(folder: Path, args) -> Path:
    g = torch.Generator().manual_seed(0)
    shapes = {f"layers.{i}.weight": (2048, 32768) for i in range(8)}
    write_safetensors(folder / "model.safetensors", shapes, lambda k, s: torch.randn(*s, generator=g) * 0.02, "F32")
    return folder


def case_b(folder: Path, args) -> Path:
    """Shards of a decoder checkpoint written a layer at a time (the generator stays small too)."""
    g = torch.Generator().manual_seed(0)
    hidden, ffn, vocab = args.hidden, args.ffn, args.vocab
    weight_map = {}

    def shard(name: str, tensors: dict) -> None:
        save_file(tensors, str(folder / name))
        weight_map.update({k: name for k in tensors})

    shard("model-emb.safetensors", {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g) * 0.02,
                                    "lm_head.weight": torch.randn(vocab, hidden, generator=g) * 0.02})
    for i in range(args.layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                  "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
                  "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn)}
        tensors = {p + k + ".weight": torch.randn(*s, generator=g) * 0.02 for k, s in shapes.items()}
        tensors[p + "input_layernorm.weight"] = torch.ones(hidden)
        shard(f"model-{i:05d}.safetensors", tensors)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def case_c(folder: Path, args) -> Path:
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (32000, 4096)}
    for i in range(args.c_layers):
        shapes.update({f"model.layers.{i}.mlp.gate_proj.weight": (11008, 4096),
                       f"model.layers.{i}.mlp.up_proj.weight": (11008, 4096),
                       f"model.layers.{i}.mlp.down_proj.weight": (4096, 11008)})
    make = lambda k, s: (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)  # noqa: E731
    write_safetensors(folder / "model.safetensors", shapes, make, "BF16")
    return folder


CASES = {"a": ("8 x 2048 x 32768 float32, one file", case_a),
         "b": ("Llama-like float32, sharded", case_b),
         "c": ("bfloat16, 32000 x 4096 embedding + 4096 x 11008 MLP", case_c)}


def largest_gram(ckpt: Path) -> tuple[int, int]:
    """(number of analysed layers, bytes of the largest Gram matrix) from the headers alone."""
    from wdiv.spectral.weights import open_weights, select_layers

    with open_weights(ckpt) as src:
        specs = select_layers(src)
    return len(specs), max(8 * s.matrix_shape[1] ** 2 for s in specs)


def run_json(script: str, ckpt: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", script, str(ckpt)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{ckpt}: failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    ap.add_argument("--layers", type=int, default=10, help="case b: decoder layers")
    ap.add_argument("--hidden", type=int, default=2048, help="case b")
    ap.add_argument("--ffn", type=int, default=5632, help="case b")
    ap.add_argument("--vocab", type=int, default=32000, help="case b")
    ap.add_argument("--c-layers", type=int, default=1, help="case c: layers of gate/up/down 4096 x 11008")
    ap.add_argument("--no-floor", action="store_true", help="skip the eigensolver floor (half the time)")
    ap.add_argument("--tmp", default=None, help="where the checkpoints are written (deleted after)")
    args = ap.parse_args()
    print(f"{'case':4s} {'GiB':>5s} {'layers':>6s} {'baseline':>8s} {'peak':>6s} {'peak-base':>9s} "
          f"{'gram':>6s} {'/gram':>5s} {'wdiv s':>7s} {'floor s':>7s} {'ratio':>5s}  (RSS and Gram in GiB)", flush=True)
    verdicts = []
    for name in args.cases:
        what, build = CASES[name]
        tmp = Path(tempfile.mkdtemp(prefix=f"wdiv_bench_memory_{name}_", dir=args.tmp))
        try:
            ckpt = build(tmp, args)
            size = sum(p.stat().st_size for p in tmp.glob("*.safetensors")) / GIB
            layers, gram = largest_gram(ckpt)
            t = time.perf_counter()
            res = run_json(ANALYSE, ckpt)
            if res["code"] != 0:
                sys.exit(f"case {name}: wdiv.analyze exited {res['code']}")
            floor = float("nan") if args.no_floor else run_json(FLOOR, ckpt)["seconds"]
            peak, base = res["peak"] / GIB, res["baseline"] / GIB
            print(f"{name:4s} {size:5.2f} {layers:6d} {base:8.2f} {peak:6.2f} {peak - base:9.2f} {gram / GIB:6.3f} "
                  f"{(peak - base) * GIB / gram:5.1f} "
                  f"{res['seconds']:7.1f} {floor:7.1f} {res['seconds'] / floor:5.2f}  {what}, torch "
                  f"{'imported' if res['torch'] else 'never imported'} "
                  f"(case wall {time.perf_counter() - t:.0f} s)", flush=True)
            limit = 0.75 if name == "a" else 1.5
            verdicts.append(f"{name}: {'OK' if peak <= limit else 'ABOVE TARGET'} ({peak:.2f} GiB, target {limit})")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("targets: (a) peak <= 0.75 GiB, every case < 1.5 GiB: " + "; ".join(verdicts))


if __name__ == "__main__":
    main()
