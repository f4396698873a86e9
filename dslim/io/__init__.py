"""Files dslim writes and reads: atomic writes (`atomic`), safetensors artifacts with metadata (`artifacts`) and
channel configurations (`channels`: dslim JSON, mmrazor YAML).

The atomic writes are re-exported here; they need no torch (the data package and the runner-side code use them).
"""

from dslim.io.atomic import atomic_dir, atomic_write, is_temporary, write_json, write_text

__all__ = ["atomic_dir", "atomic_write", "is_temporary", "write_json", "write_text"]
