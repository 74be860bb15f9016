"""Real vLLM servers for the upstream tests: a tiny Idefics3 written on the spot, vLLM's CPU build installed
into a cached environment of its own (scripts/install-vllm), servers on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 56  # pixels a side; patches of 14 make 16 image tokens per image

# The demo's GLM-style layout; images become one <image> placeholder that LLaVA's processor expands.
CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def write_vision_model(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Idefics3 (its own vision tower, a Llama text model with head_dim 64 as vLLM's CPU attention
    wants) with random weights and a tokenizer trained on the spot. Idefics3 because vLLM 0.32's LLaVA,
    Gemma 3 and every CLIP/SigLIP family import transformers' torchvision image processors; this one
    loads with the PIL processor."""
    import torch
    from transformers import AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration, LlamaConfig
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

    from gateway.engine.demo.tokenizer import build_tokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir)
    tok: Any = AutoTokenizer.from_pretrained(out_dir)
    extra = ["<fake_token_around_image>", IMAGE_TOKEN, "<end_of_utterance>", "<global-img>"]
    tok.add_special_tokens({"additional_special_tokens": extra})
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in ("<|endoftext|>", "<|user|>", "<pad>", IMAGE_TOKEN)}
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=8192,
        eos_token_id=[ids["<|endoftext|>"], ids["<|user|>"]], pad_token_id=ids["<pad>"],
    )  # fmt: skip
    vision = Idefics3VisionConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE_SIZE,
        patch_size=14,
    )  # fmt: skip
    config = Idefics3Config(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=ids[IMAGE_TOKEN], scale_factor=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(config).save_pretrained(out_dir)
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False,
    )  # fmt: skip
    seq_len = (IMAGE_SIZE // 14) ** 2 // 4
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len, chat_template=CHAT_TEMPLATE
    )
    processor.save_pretrained(out_dir)
    return out_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vllm_python(say: Callable[[str], None] = print, script: Path = ROOT / "scripts" / "install-vllm") -> str:
    """vLLM's interpreter, installing it on first use (a few minutes; cached after); the script's
    progress lines go to `say` as they come."""
    with subprocess.Popen([str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None and process.stderr is not None
        others = []
        for line in process.stderr:
            if line.startswith("==> "):
                say(line[4:].rstrip())
            else:
                others.append(line)
        out = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"scripts/install-vllm failed ({process.returncode}):\n{''.join(others)[-4000:]}")
    return out.strip().splitlines()[-1]


def write_vision_lora(model_dir: Path, out_dir: Path, rank: int = 8, seed: int = 1) -> Path:
    """A LoRA adapter for `write_vision_model`'s text model (q and v projections), its B matrices random so that
    it changes the greedy reply (peft starts B at zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Idefics3ForConditionalGeneration

    base = Idefics3ForConditionalGeneration.from_pretrained(model_dir)
    lora = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=r".*text_model.*\.(q_proj|v_proj)")
    model = get_peft_model(base, lora)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    model.save_pretrained(str(out_dir))
    return out_dir


@dataclass
class VllmServer:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value summed over its label sets that carry `labels`, from the server's /metrics."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? ([0-9.eE+-]+)$", re.MULTILINE)
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        return sum(float(value) for found, value in pattern.findall(text) if all(w in found for w in wanted))

    def kill(self) -> None:
        """Stop it at once (its whole process group: vLLM runs its engine in a child process)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def start_vllm(model_dir: Path, port: int, log_dir: Path, python: str | None = None, lora_rank: int | None = None) -> VllmServer:
    """Start vLLM's OpenAI server on 127.0.0.1:port; returns at once (see `wait_ready`). With `lora_rank`, it
    serves LoRA adapters up to that rank and loads and unloads them at run time."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO", "OMP_NUM_THREADS": "1"}
    env.pop("GATEWAY_CACHE_DIR", None)
    log_path = log_dir / f"vllm-{port}.log"
    args = [
        python or vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "tiny-vlm", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "8192", "--max-num-seqs", "32", "--enforce-eager", "--limit-mm-per-prompt", '{"image": 1}',
    ]  # fmt: skip
    if lora_rank is not None:
        args += ["--enable-lora", "--max-lora-rank", str(lora_rank), "--max-loras", "2"]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return VllmServer(process=process, port=port, log_path=log_path)


def wait_ready(server: VllmServer, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"vLLM exited:\n{server.log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"vLLM not ready in {timeout_s} s:\n{server.log_path.read_text()[-4000:]}")


@dataclass
class VllmPair:
    """Two replicas of the tiny vision model, started together (their start-ups overlap)."""

    primary: VllmServer
    secondary: VllmServer
    model_dir: Path


def start_pair(model_dir: Path, ports: tuple[int, int], log_dir: Path, say: Callable[[str], None] = print) -> VllmPair:
    python = vllm_python(say)
    say(f"starting two vLLM servers on ports {ports[0]} and {ports[1]} (about 1.5 minutes on 2 cores)")
    servers = [start_vllm(model_dir, port, log_dir, python) for port in ports]
    try:
        for server in servers:
            wait_ready(server)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return VllmPair(primary=servers[0], secondary=servers[1], model_dir=model_dir)
