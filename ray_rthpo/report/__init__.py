"""Reporting, without Ray: the one selection rule (``selection``), summaries (``summary``), statistics
over seeds (``stats``), the stated result of a comparison (``conclusion``), text that fits a terminal
(``console``), figures (``plots``), the progress journal (``journal``) and atomic file writes (``files``).
Table 1's table and figures are in :mod:`ray_rthpo.table1.report`."""
