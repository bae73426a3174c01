"""A user's own project, outside ray_rthpo: a character-level language model of the Python standard library.

``data.load`` (next-character windows of the stdlib's source, split by file) and ``model.build`` (a tiny
causal transformer) follow the factory signatures ``rthpo`` expects (``ray_rthpo/factories.py``); the suite's
``char_lm_adamw`` workload (``configs/suite/char_lm_adamw.yaml``) names them.
"""
