"""The embedded OpenAI-compatible server: serves local models and fine-tunes them with LoRA.

Importing this package is cheap: torch and transformers load only when a model is first used.
"""

from distill_server.models import DEFAULT_MODEL_ID, ModelUnavailable
from distill_server.server import LocalServer

__all__ = ["DEFAULT_MODEL_ID", "LocalServer", "ModelUnavailable"]
