"""``Generator``: prompts in, completions out, with a KV cache, batches and streaming.

    gen = Generator("llama-dir")                       # model directory, checkpoint, ...
    [c] = gen.generate(["To be, or not to be"], max_new_tokens=64)
    print(c.text, c.finish_reason)
    for piece in gen.stream("Once upon a time", decode_strategy="sampling", top_p=0.9, seed=1):
        print(piece, end="", flush=True)

Prompts of a batch are left-padded to the longest; each row has its own positions and a mask that
hides its padding (see slots.py). A model directory runs in dygraph (decoding.py); an export
directory (``llama-infer export``) runs its programs through Paddle's inference engine
(predictor.py), and then llama-model is never imported. A row stops at an end-of-sequence token, at a stop string or
after ``max_new_tokens``; the batch stops when every row has.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from llama_data import DataError, load_tokenizer
from llama_infer._paddle import paddle
from llama_infer.errors import InferError
from llama_infer.manifest import is_export
from llama_infer.sampling import SamplingConfig, next_tokens
from llama_infer.streaming import TextStream, find_stop
from llama_infer.threads import physical_cores

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]  # generated ids, without the end-of-sequence token that ended them
    finish_reason: str  # "eos", "stop" (a stop string) or "length"
    text: str | None = None  # the generated text, cut before a stop string; None without tokenizer
    prompt: str | None = None


def check_dtype(dtype: str, on_gpu: bool | None = None) -> None:
    if dtype not in DTYPES:
        raise InferError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    on_gpu = paddle.is_compiled_with_cuda() if on_gpu is None else on_gpu
    if dtype != "float32" and not on_gpu:
        raise InferError(
            f"--dtype {dtype} needs a GPU: Paddle's CPU build has no {dtype} matmul kernels; use float32"
        )


def _tokenizer_default_bos(directory: str | None) -> bool:
    """LLaMA-family tokenizers say in tokenizer_config.json whether prompts start with BOS."""
    if directory is None:
        return False
    path = os.path.join(directory, "tokenizer_config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return bool(json.load(fh).get("add_bos_token", False))
    except (OSError, ValueError, AttributeError):
        return False


def _set_math_threads(threads: int) -> None:
    """The threads of Paddle's eager CPU kernels, through llama-model's adapter of that Paddle
    internal. An export directory served without llama-model leaves them as they are: the inference
    engine takes its own (predictor.py)."""
    try:
        from llama_model.paddle_compat import settings
    except ImportError:  # as _paddle.py: serving an export directory needs no llama-model
        return
    settings.set_math_threads(threads)


class Generator:
    """Text generation from a model directory (or a training checkpoint, or a loaded model)."""

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        dtype: str | None = None,
        add_bos: bool | None = None,
        threads: int | None = None,
    ):
        """``model``: a path (a model directory or checkpoint, see loading.py; or an export directory,
        see export.py) or a ``llama_model.LlamaForCausalLM``. ``tokenizer``: a spec for
        ``llama_data.load_tokenizer`` (a ``.model``, a ``tokenizer.json``, a directory, ``"byte"``),
        a tokenizer object, or None for the one in the model directory (if any). ``dtype``: of the
        weights (default float32); an export keeps the dtype it was exported with. ``add_bos``: start
        every prompt with BOS; by default as tokenizer_config.json says, else no. ``threads``: CPU
        threads of both paths, by default one per physical core this process may use."""
        if threads is None:  # one per physical core (threads.py); Paddle alone would use one
            threads = physical_cores()
        _set_math_threads(int(threads))
        directory = None
        if isinstance(model, str | os.PathLike) and is_export(os.fspath(model)):
            from llama_infer.predictor import StaticDecoder, read_export_config

            directory = os.fspath(model)
            self.decoder = StaticDecoder(directory, threads=threads)
            exported = self.decoder.manifest["dtype"]
            if dtype not in (None, exported):
                raise InferError(
                    f"{directory} holds {exported} programs; --dtype {dtype} applies when exporting"
                )
            self.model = None
            self.config = read_export_config(directory)
            self.context = self.decoder.capacity
            self.context_name = "the export's capacity (llama-infer export --max-seq-len)"
        else:
            from llama_infer.decoding import CachedDecoder

            check_dtype(dtype or "float32")
            if isinstance(model, str | os.PathLike):
                from llama_infer.loading import load_model

                loaded = load_model(os.fspath(model), dtype=dtype or "float32")
                model, directory = loaded.model, loaded.directory
            model.eval()
            self.model = model
            self.config = model.config
            self.decoder = CachedDecoder(model)
            self.context = self.config.max_position_embeddings
            self.context_name = "the model's context"
        self.tokenizer = self._tokenizer(tokenizer, directory)
        self.add_bos = _tokenizer_default_bos(directory) if add_bos is None else add_bos
        if self.add_bos and (self.tokenizer is None or self.tokenizer.bos_id is None):
            raise InferError("add_bos needs a tokenizer with a BOS token")

    # -------------------------------------------------------------------------------- tokenizer
    def _tokenizer(self, spec, directory: str | None):
        if spec is None:
            if directory is None or not any(
                os.path.isfile(os.path.join(directory, f))
                for f in ("tokenizer.model", "tokenizer.json")
            ):
                return None
            spec = directory
        if isinstance(spec, str | os.PathLike):
            try:
                spec = load_tokenizer(spec)
            except DataError as exc:
                raise InferError(str(exc)) from None
        vocab = self.config.vocab_size
        if spec.vocab_size > vocab:
            raise InferError(
                f"tokenizer {getattr(spec, 'name', '')} has {spec.vocab_size} tokens but the model's "
                f"vocabulary has {vocab}: they do not belong together"
            )
        return spec

    def _require_tokenizer(self):
        if self.tokenizer is None:
            raise InferError("no tokenizer: the model directory has none; pass one (--tokenizer)")
        return self.tokenizer

    def encode(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InferError("empty prompt: give some text to continue")
        ids = list(self._require_tokenizer().encode(prompt))
        if self.add_bos:
            ids.insert(0, self.tokenizer.bos_id)
        return ids

    def _eos_ids(self) -> tuple[int, ...]:
        eos = self.config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if self.tokenizer is not None and self.tokenizer.eos_id is not None:
            ids.add(self.tokenizer.eos_id)
        return tuple(sorted(ids))

    # --------------------------------------------------------------------------------- generate
    def generate(
        self, prompts: str | Sequence[str], *, batch_size: int = 8, **options
    ) -> Completion | list[Completion]:
        """Complete each prompt; one Completion for a string, a list for a list. ``options``: those of
        ``generate_ids``."""
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        ids = [self.encode(t) for t in texts]
        out = self.generate_ids(ids, batch_size=batch_size, **options)
        for completion, text in zip(out, texts):
            completion.prompt = text
        return out[0] if single else out

    def stream(self, prompt: str, **options) -> Iterator[str]:
        """Yield the generated text of one prompt piece by piece, as tokens come. ``options``: those
        of ``generate_ids``."""
        pieces: list[str] = []
        stream = TextStream(self._require_tokenizer().decode, options.get("stop", ()))

        def on_step(row: int, ids: list[int], final: bool) -> None:
            pieces.append(stream.update(ids, final))

        for _ in self._run([self.encode(prompt)], [], on_step=on_step, **options):
            yield from (p for p in pieces if p)
            pieces.clear()

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        batch_size: int = 8,
        on_step: Callable[[int, list[int], bool], None] | None = None,
        **options,
    ) -> list[Completion]:
        """Complete token-id prompts, ``batch_size`` at a time. Options: ``max_new_tokens`` (128),
        ``decode_strategy`` ("greedy" | "sampling"), ``temperature``, ``top_k``, ``top_p``,
        ``repetition_penalty``, ``stop`` (strings), ``seed``, ``eos_token_ids`` (default: the
        model's and the tokenizer's; () never stops early)."""
        if batch_size < 1:
            raise InferError(f"batch size must be >= 1, got {batch_size}")
        results: list[Completion] = []
        for start in range(0, len(prompt_ids), batch_size):
            batch = [list(p) for p in prompt_ids[start : start + batch_size]]

            def offset_step(row, ids, final, _start=start):
                if on_step is not None:
                    on_step(_start + row, ids, final)

            for _ in self._run(batch, results, on_step=offset_step, **options):
                pass
        return results

    # --------------------------------------------------------------------------------- the loop
    def _check_lengths(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        context, name = self.context, self.context_name
        if max_new_tokens < 1:
            raise InferError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        for ids in prompts:
            if not ids:
                raise InferError("empty prompt: give some text to continue")
            if len(ids) >= context:
                raise InferError(
                    f"prompt of {len(ids)} tokens is longer than {name} "
                    f"({context} positions, one of them for the first new token)"
                )
            if len(ids) + max_new_tokens > context:
                raise InferError(
                    f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens} exceeds "
                    f"{name} of {context} positions: lower max_new_tokens to "
                    f"{context - len(ids)} or shorten the prompt"
                )
            bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
            if bad:
                raise InferError(
                    f"token id {bad[0]} is outside the vocabulary (0..{self.config.vocab_size - 1})"
                )

    def _run(
        self,
        prompts: list[list[int]],
        results: list[Completion],
        *,
        max_new_tokens: int = 128,
        decode_strategy: str = "greedy",
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        stop: Sequence[str] = (),
        seed: int = 0,
        eos_token_ids: Sequence[int] | None = None,
        on_step: Callable[[int, list[int], bool], None] | None = None,
    ) -> Iterator[None]:
        """Generate for one batch, yielding after every step; appends its completions to ``results``."""
        cfg = SamplingConfig(decode_strategy, temperature, top_k, top_p, repetition_penalty)
        stop = tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)
        if stop:
            self._require_tokenizer()
        self._check_lengths(prompts, max_new_tokens)
        eos = set(self._eos_ids() if eos_token_ids is None else (int(t) for t in eos_token_ids))
        rng = np.random.default_rng(seed)
        b, p = len(prompts), max(len(ids) for ids in prompts)
        pads = np.array([p - len(ids) for ids in prompts], np.int64)
        pad_id = self.config.pad_token_id or 0
        batch = np.full((b, p), pad_id, np.int64)
        for i, ids in enumerate(prompts):
            batch[i, pads[i] :] = ids
        seen = None
        if repetition_penalty != 1.0:
            seen = np.zeros((b, self.config.vocab_size), bool)
            for i, ids in enumerate(prompts):
                seen[i, ids] = True
        generated: list[list[int]] = [[] for _ in range(b)]
        reasons: list[str | None] = [None] * b
        state, logits = self.decoder.prefill(batch, pads, p + max_new_tokens)
        for step in range(max_new_tokens):
            tokens = next_tokens(logits, seen, cfg, rng)
            for i in range(b):
                if reasons[i] is not None:
                    continue
                token = int(tokens[i])
                if token in eos:
                    reasons[i] = "eos"
                else:
                    generated[i].append(token)
                    if seen is not None:
                        seen[i, token] = True
                    if stop and find_stop(self.tokenizer.decode(generated[i]), stop) >= 0:
                        reasons[i] = "stop"
                    elif step == max_new_tokens - 1:
                        reasons[i] = "length"
                if on_step is not None:
                    on_step(i, generated[i], reasons[i] is not None)
            yield
            if all(r is not None for r in reasons):
                break
            logits = self.decoder.step(state, tokens)
        results.extend(
            Completion(list(ids), gen, reason, self._text(gen, stop))
            for ids, gen, reason in zip(prompts, generated, reasons)
        )

    def _text(self, ids: list[int], stop: Sequence[str]) -> str | None:
        if self.tokenizer is None:
            return None
        text = self.tokenizer.decode(ids)
        cut = find_stop(text, stop)
        return text if cut < 0 else text[:cut]
