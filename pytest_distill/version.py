"""The package's version, apart from the public facade so that the plugin's own modules (the
JSON report) read it without importing the facade above them."""

from __future__ import annotations

__version__ = "0.1.0"
