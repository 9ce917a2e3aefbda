"""Records, dataset readers and writers (the demo's synthetic task is :mod:`mstar_fast.demo.synthetic`).

Pillow, pyarrow and ``datasets`` are imported lazily (only when an image or a Parquet / ``datasets``
source is actually read), so importing this package needs none of them.
"""

from mstar_fast.data.images import ImageError, check_image, load_image
from mstar_fast.data.jsonl import JsonlWriter, done_keys, iter_jsonl, read_jsonl, read_records, repair_jsonl
from mstar_fast.data.readers import BadRow, LoadReport, load_prompts, parse_choices_from_question
from mstar_fast.data.records import Prompt, Sample

__all__ = [
    "load_image",
    "check_image",
    "ImageError",
    "Prompt",
    "Sample",
    "load_prompts",
    "LoadReport",
    "BadRow",
    "parse_choices_from_question",
    "JsonlWriter",
    "read_jsonl",
    "iter_jsonl",
    "read_records",
    "done_keys",
    "repair_jsonl",
]
