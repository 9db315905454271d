"""The engine on a GPU: archives made there decode on the CPU and the other way round, and GPU throughput.

    python benchmarks/gpu_check.py --model-files DIR --out gpu.json

DIR holds the default model's config.json and tokenizer.json (its weights are too large to carry to a lent
GPU machine, so the SmolLM2-135M-shaped model here has random weights: exactness does not depend on them,
and speed depends only on the shapes). Archives are compared byte for byte with a small model trained
here on real text. With random weights a chunk codes worse than LZMA2, so for the throughput runs the
encoder's classical alternative is "stored" alone, which keeps every chunk on the model.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TRAINING_TEXT, build_tiny_model  # noqa: E402

import lmpress  # noqa: E402
from lmpress import models  # noqa: E402
from lmpress.codec import format as fmt  # noqa: E402
from lmpress.codec import segments  # noqa: E402
from lmpress.exact import gemm  # noqa: E402

CPU = torch.device("cpu")


def section(report: dict, name: str):
    """Run the decorated check, recording its result or its failure under ``name``."""

    def run(check):
        started = time.perf_counter()
        try:
            report[name] = check()
        except Exception:
            report[name] = {"error": traceback.format_exc()[-3000:]}
        report[name + "_seconds"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps(report[name])[:2000], flush=True)
        return check

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-files", required=True, help="folder with config.json and tokenizer.json")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bytes", type=int, default=1 << 20, help="text for the throughput runs")
    parser.add_argument("--device", default="cuda", help="the device to check against the CPU (cpu: a dry run)")
    args = parser.parse_args()
    report: dict = {"torch": torch.__version__, "python": platform.python_version()}
    GPU = torch.device(args.device)
    if GPU.type == "cuda" and not torch.cuda.is_available():
        report["error"] = "no CUDA device"
        Path(args.out).write_text(json.dumps(report, indent=1))
        return
    report["gpu"] = torch.cuda.get_device_name() if GPU.type == "cuda" else "none (dry run on the CPU)"
    synchronize = torch.cuda.synchronize if GPU.type == "cuda" else lambda: None
    tmp = Path(tempfile.mkdtemp())

    @section(report, "backends")
    def _():
        shapes = [(576, 960), (576, 576), (576, 3072), (1536, 576), (576, 49152), (64, 2048), (2048, 64)]
        out = {}
        for name in gemm.candidates(GPU):
            try:
                gemm.verify(gemm.Gemm(name), shapes, GPU)
                a, b = gemm._operands(4096, 576, 3072, torch.Generator().manual_seed(0), GPU)
                seconds = gemm._time(lambda n=name, a=a, b=b: gemm.Gemm(n).mm(a, b), GPU)
                out[name] = {"exact": True, "TOP/s at 4096×576×3072": round(2 * 4096 * 576 * 3072 / seconds / 1e12, 1)}
            except gemm.BackendError as e:
                out[name] = {"exact": False, "why": str(e)[:300]}
        out["chosen"] = gemm.choose(GPU, shapes).name
        return out

    @section(report, "tiny_model_archives")
    def _():
        folder = build_tiny_model(tmp / "tiny")
        on_cpu, on_gpu = models.load_model(str(folder), CPU), models.load_model(str(folder), GPU)
        data = TRAINING_TEXT.encode()[:3000]
        settings = {"chunk_size": 600, "window": 64, "keep": 16}
        made_on_cpu = lmpress.compress(data, model=on_cpu, **settings)
        archives = {}
        for name in report["backends"]:
            if name != "chosen" and report["backends"][name].get("exact"):
                on_gpu.net.gemm = gemm.Gemm(name)
                archives[name] = lmpress.compress(data, model=on_gpu, **settings)
        probe = lmpress.Compressor(on_gpu, **settings)
        probe.compress(data)
        probe.flush()
        return {
            "identical to the CPU's, per GPU backend": {k: v == made_on_cpu for k, v in archives.items()},
            "GPU decodes the CPU's archive": lmpress.decompress(made_on_cpu, model=on_gpu) == data,
            "CPU decodes the GPU's archives": all(
                lmpress.decompress(v, model=on_cpu) == data for v in archives.values()
            ),  # noqa: E501
            "chunks": probe.stats.chunks,
        }

    config = json.loads((Path(args.model_files) / "config.json").read_text())
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keys += ("num_key_value_heads", "head_dim", "rms_norm_eps", "tie_word_embeddings", "bos_token_id")
    shaped = LlamaForCausalLM(LlamaConfig(**{k: config[k] for k in keys}, rope_theta=100000.0))
    state = {k: v.contiguous() for k, v in shaped.state_dict().items()}
    state.pop("lm_head.weight", None)
    del shaped

    def shaped_model(device):
        tokenizer = Tokenizer.from_file(str(Path(args.model_files) / "tokenizer.json"))
        return models._build("smollm2-shaped", config, state, tokenizer, device)

    big_cpu, big_gpu = shaped_model(CPU), shaped_model(GPU)
    text = b"".join(p.read_bytes() for p in sorted(Path(__file__).resolve().parents[1].rglob("*.py")))
    text = (text * (1 + args.bytes // len(text)))[: args.bytes].decode("utf-8", "ignore").encode()
    segments._classical = lambda data: (fmt.METHOD_STORED, data)  # keep every chunk on the model (see above)

    @section(report, "shaped_model_across_devices")
    def _():
        ids = torch.tensor([[1, *big_cpu.tokenize(text[:3000].decode("utf-8", "ignore").encode())[:700]]])
        small = text[:2000].decode("utf-8", "ignore").encode()
        with torch.inference_mode():
            on_cpu = big_cpu.net.logits(big_cpu.net.forward(ids)[0])
            on_gpu = big_gpu.net.logits(big_gpu.net.forward(ids.to(GPU))[0]).cpu()
        from_gpu = lmpress.compress(small, model=big_gpu)
        return {
            "same model id": big_cpu.model_id == big_gpu.model_id,
            "full-pass logits equal (700 tokens)": bool(torch.equal(on_cpu, on_gpu)),
            "archive made on GPU equals CPU's": from_gpu == lmpress.compress(small, model=big_cpu),
            "CPU decodes it": lmpress.decompress(from_gpu, model=big_cpu) == small,
            "GPU decodes it": lmpress.decompress(from_gpu, model=big_gpu) == small,
        }

    runs = {  # name: (settings, share of the text)
        "default settings": ({}, 4),
        "wide: 2 KiB chunks, 1024 rows": ({"chunk_size": 2048, "batch": 1024}, 1),
    }
    for name, (settings, share) in runs.items():

        @section(report, "throughput, " + name)
        def _(settings=settings, share=share):
            part = text[: len(text) // share].decode("utf-8", "ignore").encode()
            synchronize()
            started = time.perf_counter()
            blob = lmpress.compress(part, model=big_gpu, **settings)
            synchronize()
            encode = time.perf_counter() - started
            started = time.perf_counter()
            back = lmpress.decompress(blob, model=big_gpu)
            synchronize()
            decode = time.perf_counter() - started
            peak = torch.cuda.max_memory_allocated() / 2**30 if GPU.type == "cuda" else float("nan")
            return {
                "bytes": len(part),
                "exact": back == part,
                "compress MB/s": round(len(part) / encode / 1e6, 3),
                "decompress MB/s": round(len(part) / decode / 1e6, 3),
                "peak GPU memory GiB": round(peak, 1),
            }

    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
