"""What every generated PNG says about itself: A1111's ``parameters`` text and a machine-readable "AI generated" mark.

A1111's "PNG Info" reads the ``parameters`` chunk back; the mark is written three ways (``ai_generated``, the
IPTC digital source type ``trainedAlgorithmicMedia`` as text and as XMP) because readers look in different places.
"""

from __future__ import annotations

import io
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from kitbooth import __version__

SAMPLER_NAME = "DPM++ 2M Karras"
IPTC_TRAINED_ALGORITHMIC = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"

_XMP = (
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
    'xmlns:xmp="http://ns.adobe.com/xap/1.0/" Iptc4xmpExt:DigitalSourceType="{src}" xmp:CreatorTool="KitBooth {v}"/>'
    "</rdf:RDF></x:xmpmeta>"
)


def a1111_parameters(prompt: str, negative: str, *, steps: int, cfg: float, seed: int, size: tuple[int, int],
                     model: str, sampler: str = SAMPLER_NAME, extra: dict[str, Any] | None = None) -> str:
    """The ``parameters`` text A1111 writes (and reads back: "PNG Info")."""
    fields = {"Steps": steps, "Sampler": sampler, "CFG scale": cfg, "Seed": seed,
              "Size": f"{size[0]}x{size[1]}", "Model": model, **(extra or {}),
              "Version": f"KitBooth {__version__}"}
    line = ", ".join(f"{k}: {v}" for k, v in fields.items())
    return f"{prompt}\nNegative prompt: {negative}\n{line}"


def with_extra(parameters: str, extra: dict[str, Any]) -> str:
    """``parameters`` (as :func:`a1111_parameters` wrote them) with more fields, before ``Version`` (A1111 order:
    generation fields first, the writer last). A field already there is replaced."""
    head, sep, line = parameters.rpartition("\n")
    fields = dict(part.split(": ", 1) for part in line.split(", ") if ": " in part)
    version = fields.pop("Version", f"KitBooth {__version__}")
    fields.update({k: str(v) for k, v in extra.items()})
    fields["Version"] = version
    return f"{head}{sep}" + ", ".join(f"{k}: {v}" for k, v in fields.items())


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    """PNG with A1111's ``parameters`` chunk and a machine-readable "AI generated" mark."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    info.add_text("Software", f"KitBooth {__version__}")
    info.add_text("ai_generated", "true")
    info.add_itxt("DigitalSourceType", IPTC_TRAINED_ALGORITHMIC)
    info.add_itxt("XML:com.adobe.xmp", _XMP.replace("{src}", IPTC_TRAINED_ALGORITHMIC).replace("{v}", __version__))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
