"""A user's own project, outside ray_rthpo: scikit-learn's breast-cancer table and a small residual MLP.

``data.load`` and ``model.build`` follow the factory signatures ``rthpo`` expects (see the README,
"Your own model, data and loss"); ``losses.smoothed_cross_entropy`` is a custom loss.
"""
