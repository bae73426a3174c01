"""Reporting, without Ray: the one selection rule (``selection``), summaries (``summary``), statistics
over seeds (``stats``), Table 1 (``table1``), figures (``plots``), the progress journal (``journal``) and
atomic file writes (``files``)."""
