"""Where computed numbers live on disk: the fingerprinted sensitivity cache (manifest, per-batch
files with checksums, calibrated quantizers), merging shard outputs, and the file helpers
(atomic write, sha256) that every other writer uses too.

Nothing here knows the methods: a method names its own directory with a `Stored` descriptor
(see clado_cli/methods), and the cache stores and checks whatever arrays it is given.
"""
from .cache import BatchInfo, Cache, Stored, first_difference, fingerprint_of, list_caches, ranges
from .files import atomic_write, json_bytes, read_json, sha256_bytes
from .merge import merge_caches

__all__ = ["BatchInfo", "Cache", "Stored", "atomic_write", "first_difference", "fingerprint_of", "json_bytes",
           "list_caches", "merge_caches", "ranges", "read_json", "sha256_bytes"]
