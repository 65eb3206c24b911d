"""The SGD update in NumPy: the readable twin of ``fastconv._ext.optim`` (sgd_update_many,
zero_many; sgd_update is one parameter's step, written out).

With g = grad + weight_decay * p (the L2 penalty folded into the gradient), as
``torch.optim.SGD``::

    (sgd.buf)   buf <- g                                        (the first step)
                buf <- momentum * buf + (1 - dampening) * g     (later steps)
    (sgd.step)  p <- p - lr * (g + momentum * buf)              (nesterov)
                p <- p - lr * buf                               (otherwise)
                p <- p - lr * g                                 (momentum = 0: plain SGD)

Every product and sum is rounded to the parameters' dtype, one operation at a time, so the
compiled twin gives the same bits.
"""
import numpy as np


def sgd_update(p, grad, buf, lr, momentum, dampening, weight_decay, nesterov, first_step,
               n_threads=None):
    """One SGD step of one parameter, eqs. (sgd.buf), (sgd.step), in place.

    p, grad, buf : ndarrays of one shape and float dtype: the parameter (updated), its
        gradient (read) and its momentum buffer (updated; not read when momentum is 0)
    lr, momentum, dampening, weight_decay : float
    nesterov : bool (needs momentum > 0)
    first_step : bool, the optimizer's first step (buf starts at g, not at 0)
    n_threads : ignored  ->  None (p and buf are written).
    """
    if not p.shape == grad.shape == buf.shape:
        raise ValueError(f"sgd_update: p, grad and buf have shapes {p.shape}, {grad.shape} "
                         f"and {buf.shape}")
    t = p.dtype.type
    g = grad
    if weight_decay:
        g = g + t(weight_decay) * p
    if momentum:
        if first_step:
            buf[...] = g                    # PyTorch starts the buffer at g, not 0
        else:
            buf *= t(momentum)
            if dampening:
                buf += t(1 - dampening) * g
            else:                           # the same bits, without a temporary
                buf += g
        g = g + t(momentum) * buf if nesterov else buf
    p -= t(lr) * g


def sgd_update_many(params, grads, bufs, lrs, weight_decays, momentum, dampening, nesterov,
                    first_step, n_threads=None):
    """:func:`sgd_update` of every parameter of a list (the compiled twin of this function
    does them in one call). params, grads, bufs: lists of arrays, one triple per parameter;
    lrs, weight_decays: one float each. n_threads: ignored."""
    if not len(params) == len(grads) == len(bufs) == len(lrs) == len(weight_decays):
        raise ValueError("sgd_update_many: params, grads, bufs, lrs and weight_decays must "
                         "have one entry per parameter")
    for p, g, b, lr, wd in zip(params, grads, bufs, lrs, weight_decays):
        sgd_update(p, g, b, lr, momentum, dampening, wd, nesterov, first_step)


def zero_many(arrays, n_threads=None):
    """Set every array of a list to zero. n_threads: ignored."""
    for a in arrays:
        a.fill(0)
