"""What A1111 emphasis costs and does on the embedded default model (issue [hardening] item 31).

Prints the time of one text encoding (prompt + negative) by diffusers' `encode_prompt` from strings and
by `facesmith.prompts.weighted_embeddings` from a weighted prompt (median of `--repeats`), and the mean
absolute pixel difference (levels of 255) between the plain prompt's image and the same prompt with
`(smiling:W)`, same seed and sampler, for each W. W = 1 must give 0: the weighted path then reduces to
diffusers' own embedding.

    python benchmarks/prompt_weighting.py [--steps 25] [--seed 1] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

PLAIN = "a photo of a smiling woman"
NEGATIVE = "blurry"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    import facesmith
    from facesmith.prompts import weighted_embeddings

    generator = facesmith.load(engine="eager")
    pipe = generator.pipe

    def timed(encode) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            with torch.no_grad():
                encode()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    weighted = PLAIN.replace("smiling", "(smiling:1.3)")
    strings = timed(lambda: pipe.encode_prompt(PLAIN, pipe.device, 1, True, negative_prompt=NEGATIVE))
    ours = timed(lambda: weighted_embeddings(pipe, weighted, NEGATIVE))
    print(f"encode, strings (diffusers):      {strings:6.1f} ms")
    print(f"encode, {weighted!r}: {ours:6.1f} ms")

    settings = dict(negative=NEGATIVE, seed=args.seed, steps=args.steps)
    plain = np.asarray(generator.generate(PLAIN, **settings)[0], np.int16)
    for weight in ("1.0", "1.3", "1.6", "0.6"):
        prompt = PLAIN.replace("smiling", f"(smiling:{weight})")
        image = np.asarray(generator.generate(prompt, **settings)[0], np.int16)
        print(f"{prompt!r}: mean |pixel difference| from the plain prompt {np.abs(image - plain).mean():.2f}")


if __name__ == "__main__":
    main()
