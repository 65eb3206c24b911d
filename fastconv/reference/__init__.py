"""NumPy reference implementations: the readable oracle of every fast kernel.

Each module here has a compiled twin in ``fastconv._ext`` with the same functions and
signatures: ``conv_direct``, ``conv_im2col``, ``conv_winograd``, ``pool``, ``batchnorm``, ``activation``,
``linear``, ``optim``, ``loss``.
``naive`` writes the convolution formulas out as loops, the oracle of the references.
"""
