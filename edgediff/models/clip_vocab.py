"""A small CLIP-format BPE vocabulary learned here, so checkpoints need no download.

CLIP's files are vocab.json (256 byte symbols, the same with an end-of-word `</w>`, then one
token per merge, then <|startoftext|> and <|endoftext|>) and merges.txt (ranked pairs).
"""

from __future__ import annotations

import collections
import itertools
import json
import re
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Words the demo and test prompts use, so common words encode to single tokens.
DEFAULT_CORPUS = """
a an the of on in at with and or big small large tiny red green blue yellow orange purple
white black pink cyan magenta brown grey gray circle square triangle star cross diamond
hexagon shape shapes left right top bottom center centre middle side corner upper lower
little near to
background photo picture image of an astronaut riding horse mountain lake sunset city
"""


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def learn_bpe(words: list[str], num_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn `num_merges` BPE merges on `words` (ties broken by pair order): vocab and merges."""
    byte_chars = list(_bytes_to_unicode().values())
    counts = collections.Counter(words)
    segmented = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, symbols in segmented.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for word, symbols in segmented.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            segmented[word] = merged
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_vocab(out_dir: str | Path, corpus: str = DEFAULT_CORPUS) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt for a vocabulary learned on `corpus`; return their paths."""
    words = re.findall(r"[a-z]+", corpus.lower())
    vocab, merges = learn_bpe(words, num_merges=400)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out / "vocab.json", out / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    return vocab_path, merges_path
