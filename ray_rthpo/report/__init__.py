"""Reporting, without Ray: the one selection rule (``selection``), summaries (``summary``), statistics
over seeds (``stats``), the stated result of a comparison (``conclusion``), text that fits a terminal
(``console``), Table 1 (``table1``), figures (``plots``), the progress journal (``journal``) and atomic
file writes (``files``)."""
