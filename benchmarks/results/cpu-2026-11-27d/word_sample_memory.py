"""Memory of the SentencePiece sample on a vocabulary that grows (docs/benchmarks.md, issue 16).

python word_sample_memory.py 500000 [sentences]: 2,000,000 sentences of 13 words drawn
log-uniformly from N random words, into a WordSample (or a SentenceSample with --sentences).
"""

import random
import resource
import sys

from s2s_cli.data.spm import SentenceSample, WordSample


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    n = int(sys.argv[1])
    kind = SentenceSample if "sentences" in sys.argv[2:] else WordSample
    base = peak_mib()
    rnd = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyzäöüß"
    vocab = ["".join(rnd.choice(letters) for _ in range(rnd.randint(3, 12))) for _ in range(n)]
    after_vocab = peak_mib()
    sample = kind(2_000_000)
    for _ in range(2_000_000):
        sample.add(" ".join(vocab[int(n ** rnd.random()) - 1] for _ in range(13)))
    print(
        f"{kind.__name__}: {len(sample.entries()):,} entries, peak RSS {peak_mib():.0f} MiB, "
        f"word list {after_vocab - base:.0f} MiB, sample ~{peak_mib() - after_vocab:.0f} MiB"
    )


if __name__ == "__main__":
    main()
