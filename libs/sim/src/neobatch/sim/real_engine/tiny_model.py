"""Build a tiny random Llama chat model for the real engine: ``ENGINE_PYTHON tiny_model.py DIR``.

Runs under the ENGINE venv's python (``tokenizers``, ``transformers`` and ``torch`` come with
vLLM there, not in the uv workspace), so it imports nothing of neobatch and is executed by path.
No hub: a byte-level BPE tokenizer trained on generated sentences, wrapped as
``PreTrainedTokenizerFast`` with a chat template (chat requests need one), and a 2-layer Llama
(hidden 128, 2 heads: head size 64, which vLLM's CPU attention supports; 16 is refused), random
weights from a fixed seed, saved as bfloat16 safetensors (about 0.5 MB). Deterministic: the same
recipe gives the same files. Cached: DIR is built in a sibling temporary directory and renamed
into place with a marker naming the recipe, so a second call (or a concurrent one) reuses it.
Prints DIR on success.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

RECIPE = "tiny-llama-v1"  # change when the recipe changes: cached models are rebuilt
MARKER = ".neobatch-tiny-model"
SEED = 1234
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
# The tokenizer's training words: whole tokens of its vocabulary (benches size prompts with them).
WORDS = (
    "the a one every some engine batch request token model machine cloud queue answer "
    "small large fast slow red blue green quiet busy ready sends reads writes keeps waits "
    "runs stops starts counts returns over under with from into after before while because"
).split()


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
        out.append(" ".join(words).capitalize() + rng.choice(".?!") + f" {rng.randint(0, 999)}")
    return out


def _tokenizer(seed: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )


def build(target: Path) -> Path:
    marker = target / MARKER
    if marker.is_file() and marker.read_text() == RECIPE:
        return target
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        tokenizer = _tokenizer(SEED)
        tokenizer.save_pretrained(tmp)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=None,
            tie_word_embeddings=False,
        )
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / MARKER).write_text(RECIPE)
        if target.exists():  # an older recipe (or a half-built one from before markers)
            if marker.is_file() and marker.read_text() == RECIPE:
                return target  # built concurrently by someone else
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: tiny_model.py DIR", file=sys.stderr)
        return 2
    print(build(Path(argv[0]).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
