"""Front ends: the command line (and later the web UI). Thin adapters over streaming.Session."""
