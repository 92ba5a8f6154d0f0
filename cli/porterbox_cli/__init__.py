"""porterbox: the portal's command-line client. It speaks only the portal's REST API (/api/)."""

__version__ = "0.1.0"
