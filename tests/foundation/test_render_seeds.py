"""A result names the seeds that reproduce its images: a run as ``seed a-b``; best-of-N's kept candidates (any
seeds of the run it drew from) one by one, so ``/generate seed=a`` is not taken to reproduce them."""

from __future__ import annotations

from kitbooth.render import generate_result


def _meta(seeds: list[int]) -> str:
    return generate_result(job_id=1, user_id=2, prompt="goal", seeds=seeds, pngs=[b"png"] * len(seeds)).content


def test_a_run_of_seeds_is_a_range_and_kept_candidates_are_listed():
    assert _meta([7, 8, 9, 10]).endswith("seed 7-10")
    assert _meta([5]).endswith("seed 5")
    assert _meta([7, 12, 9, 14]).endswith("seeds 7, 12, 9, 14")
