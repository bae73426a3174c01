"""What an experiment is, without Ray: its typed config (``config``), search spaces (``spaces``), each
strategy resolved once (``strategy``), the output folder (``output``) and the paper's Table 1 (``table1``)."""
