"""``batch_throughput_ratio``: 4 users' requests in one batched call / the same 4 run one after another.

Four users, each with their own TI face and the same LoRA kit, one image each, same size and steps (the batch key
the worker groups by). Batched: one ``training.generate.generate`` call with the 4 requests (the composer gives
each request its own slots). Sequential: 4 calls of one request. Both include the text encoder, the denoising loop,
the VAE decode and the PNG encode; throughput ratio = sequential time / batched time.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import Report, make_concept, median_time


def run(report: Report, *, pipe: Any, composer: Any, device: Any, size: int, steps: int, repeats: int) -> None:
    from training.compose import ConceptUse
    from training.generate import GenerationRequest, generate

    kit = ConceptUse("bench/kit-lora", make_concept(pipe, kind="kit", method="lora", seed=4))
    reqs = []
    for u in range(4):
        face = ConceptUse(f"bench/user{u}/face", make_concept(pipe, kind="face", method="ti", seed=10 + u))
        reqs.append(GenerationRequest(
            prompt=f"{face.artifact.trigger} celebrating a goal in a {kit.artifact.trigger} shirt, stadium",
            concepts=[face, kit], seed=100 + u, count=1, width=size, height=size, steps=steps, guidance=7.0,
        ))

    def batched() -> None:
        generate(pipe, composer, reqs, safety_checker=False)

    def sequential() -> None:
        for r in reqs:
            generate(pipe, composer, [r], safety_checker=False)

    t_seq = t_bat = 0.0
    seqs, bats = [], []
    batched()
    sequential()  # warm-up
    for _ in range(repeats):  # interleaved: both see the same machine load
        seqs.append(median_time(sequential, repeats=1, warmup=0, device=device))
        bats.append(median_time(batched, repeats=1, warmup=0, device=device))
    import statistics

    t_seq, t_bat = statistics.median(seqs), statistics.median(bats)
    report.set("batch_throughput_ratio", round(t_seq / t_bat, 3))
    report.note(f"batch: 4 users (own TI face + a LoRA kit), 1 image each, {size}², {steps} steps, CFG: batched "
                f"{t_bat:.3f} s ({4 / t_bat:.2f} img/s) vs one after another {t_seq:.3f} s ({4 / t_seq:.2f} img/s)")
