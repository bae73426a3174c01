"""A user's own model on a built-in dataset: a small CNN for CIFAR-10 (``data.name: cifar10``).

``model.build`` follows the model factory signature ``rthpo`` expects (``ray_rthpo/factories.py``); the
suite's ``cifar10_cnn`` workload (``configs/suite/cifar10_cnn.yaml``) names it.
"""
