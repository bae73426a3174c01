"""What an experiment is, without Ray: its typed config, each strategy resolved once against the base
(``config``), search spaces (``spaces``), the searchers' names and options (``searchers``) and the output
folder (``output``). The paper's Table 1 has its own
package, :mod:`ray_rthpo.table1`, whose config layer (``ray_rthpo.table1.config``) is torch- and Ray-free
too."""
