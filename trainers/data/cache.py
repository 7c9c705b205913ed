"""The on-disk cache of decoded ImageFolder trees, keyed by the folder's path, count, mtime and size.

60,000 JPEG files of CIFAR-10 cost seconds to decode once and a fraction of a second afterwards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from trainers.data.decode import Images, decode
from trainers.data.folders import Files

_CACHE_VERSION = 1


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir or os.environ.get("POLARSEARCH_CACHE") or "~/.cache/polarsearch").expanduser()


def _source_key(files: Files) -> str:
    """The identity of a folder's contents: its path, file count, newest mtime and total size."""
    newest = total = 0
    for path in [*files.paths, *(str(files.root / c) for c in files.classes)]:
        stat = os.stat(path)
        newest, total = max(newest, stat.st_mtime_ns), total + stat.st_size
    text = f"v{_CACHE_VERSION}|{files.root.resolve()}|{len(files.paths)}|{newest}|{total}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def decode_cached(files: Files, cache_dir: Path) -> Images:
    """The decoded images of `files`, from the on-disk cache when the folder has not changed."""
    cache = cache_dir / f"{files.root.parent.name}-{files.root.name}-{_source_key(files)}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            return Images(saved["images"], saved["labels"], list(saved["classes"]))
        except Exception:  # a broken cache file is decoded again and rewritten
            pass
    images = Images(decode(files.paths), torch.tensor(files.labels, dtype=torch.int64), files.classes)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        torch.save({"images": images.images, "labels": images.labels, "classes": images.classes}, partial)
        os.replace(partial, cache)
    except OSError:
        pass  # an unwritable cache only costs the decoding again next time
    return images
