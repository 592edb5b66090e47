"""Peak memory of `wdiv.analyze` on a >= 2 GB safetensors checkpoint with LLM-like shapes.

The checkpoint (a Llama-style decoder: embeddings, q/k/v/o, gate/up/down, norms) is generated
in a temporary directory, analysed in a fresh subprocess with the CLI's defaults, then deleted.
Prints the file size and the analysing process's peak RSS (target <= 1.5 GB).

    python scripts/bench_memory.py [--layers 10] [--hidden 2048] [--ffn 5632] [--vocab 32000]
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

CHILD = r"""
import json, resource, sys, time
from wdiv.analyze import main
t = time.perf_counter()
code = main([sys.argv[1], "-q", "--force"])
print(json.dumps({"code": code, "seconds": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_checkpoint(folder: Path, layers: int, hidden: int, ffn: int, vocab: int) -> Path:
    """Shards of a decoder checkpoint written a layer at a time (the generator stays small too)."""
    g = torch.Generator().manual_seed(0)
    weight_map = {}

    def shard(name: str, tensors: dict) -> None:
        save_file(tensors, str(folder / name))
        weight_map.update({k: name for k in tensors})

    shard("model-emb.safetensors", {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g) * 0.02,
                                    "lm_head.weight": torch.randn(vocab, hidden, generator=g) * 0.02})
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (hidden, hidden),
                  "self_attn.v_proj": (hidden, hidden), "self_attn.o_proj": (hidden, hidden),
                  "mlp.gate_proj": (ffn, hidden), "mlp.up_proj": (ffn, hidden), "mlp.down_proj": (hidden, ffn)}
        tensors = {p + k + ".weight": torch.randn(*s, generator=g) * 0.02 for k, s in shapes.items()}
        tensors[p + "input_layernorm.weight"] = torch.ones(hidden)
        shard(f"model-{i:05d}.safetensors", tensors)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wdiv_bench_memory_"))
    try:
        ckpt = write_checkpoint(tmp, args.layers, args.hidden, args.ffn, args.vocab)
        size_gb = sum(p.stat().st_size for p in ckpt.glob("*.safetensors")) / 1e9
        print(f"checkpoint: {size_gb:.2f} GB in {len(list(ckpt.glob('*.safetensors')))} shards "
              f"({args.layers} layers, hidden {args.hidden}, ffn {args.ffn}, vocab {args.vocab})", flush=True)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(ckpt)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"analysis failed:\n{out.stderr[-2000:]}")
        res = json.loads(out.stdout.strip().splitlines()[-1])
        n = len((ckpt / "spectra.csv").read_text().splitlines()) - 1
        print(f"analysed {n} layers in {res['seconds']:.1f} s (exit {res['code']}, wall {time.perf_counter() - t:.1f} s)")
        verdict = "OK" if res["peak_rss_mb"] <= 1536 else "ABOVE TARGET"
        print(f"peak RSS: {res['peak_rss_mb'] / 1024:.2f} GB (target <= 1.5 GB: {verdict})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
