#!/usr/bin/env python3
"""Serve the web UI and streaming API (http://127.0.0.1:7779 by default). See `--help`."""

import sys

from src.server.main import main

if __name__ == "__main__":
    sys.exit(main())
