"""The tools floor: the ``attnzoo`` console script, benchmarks, MAC counts (:mod:`.macs`) and checkpoint export.

It sits on top, beside :mod:`attnzoo.train`: it imports the zoo, blocks and kernels (and the training
floor's Lightning-free checkpoint reader); nothing below imports it.
"""
