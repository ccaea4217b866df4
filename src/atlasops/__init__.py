"""Atlas: the operations control plane for a business run partly by autonomous agents.

The library does the work; the CLI (``atlasops.cli``) is a thin face over it.
"""

from .errors import AtlasError
from .ledger import Event, Ledger, NewEvent
from .workspace import Workspace

__version__ = "0.1.0"

__all__ = ["AtlasError", "Event", "Ledger", "NewEvent", "Workspace", "__version__"]
