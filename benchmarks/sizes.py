"""``face_artifact_bytes_full_size``, ``ti_artifact_bytes_full_size``: artifact bytes at real SD 1.5 size.

Computed by ``training.sizes`` on the meta device (SD 1.5's UNet and text encoder built without memory; the
safetensors layout reproduced byte for byte). Face = the face default (pivotal: TI vectors + UNet LoRA r4);
TI = the face default trained as plain textual inversion.
"""

from __future__ import annotations

from benchmarks.common import Report


def run(report: Report) -> None:
    from training.config import default_config
    from training.sizes import artifact_bytes_full_size, parameters_full_size

    face = default_config("face")
    ti = default_config("face", method="ti")
    fb, tb = artifact_bytes_full_size(face), artifact_bytes_full_size(ti)
    report.set("face_artifact_bytes_full_size", fb)
    report.set("ti_artifact_bytes_full_size", tb)
    report.note(f"sizes (SD 1.5, fp16): face {face.method} r{face.rank} + {face.num_vectors} vectors "
                f"{fb:,} B ({parameters_full_size(face):,} params); TI {ti.num_vectors} vectors {tb:,} B; "
                f"100,000 users' faces = {fb * 100_000 / 1e9:.0f} GB")
