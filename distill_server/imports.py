"""One lock for the first import of the modules that import torch and transformers.

The server imports them lazily (``import distill_server`` stays cheap), from whichever thread
needs them first: a request's, the batcher's, the trainer's. transformers resolves its names
lazily, module by module, and two threads importing it at once can be handed each other's
half-initialized modules (a job resumed as the server started failed with "cannot import name
'AutoConfig' from 'transformers'" while a request was loading the model). Under this lock they
import one after the other.
"""

from __future__ import annotations

import threading

IMPORT_LOCK = threading.RLock()
