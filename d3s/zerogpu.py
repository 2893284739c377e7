"""ZeroGPU (the GPUs a Hugging Face Space shares between Spaces) for the app's two diffusion handlers.

On a ZeroGPU Space a GPU is held only while a function decorated with ``spaces.GPU`` runs, for at most the
``duration`` it asks for; the scheduler serves short requests first, so asking for what a request needs, not a
fixed maximum, is what keeps a demo responsive. :func:`on_gpu` applies ``spaces.GPU(duration=...)`` with a
duration computed from the request itself (images, size, steps, strength), bounded by the app's time limit.

Where it does nothing:

- without the ``spaces`` package, :func:`on_gpu` returns the function unchanged;
- with it, off ZeroGPU (``SPACES_ZERO_GPU`` unset: a laptop, a CPU Space, a dedicated GPU), ``spaces.GPU`` itself
  returns the function unchanged (``spaces/zero/decorator.py``: ``if not Config.zero_gpu: return task``).

It decorates the *inner* work function (``@served(...)`` above ``@on_gpu(...)``), so a request's bounds are
checked and the job admitted (:func:`d3s.handlers.served`) before any GPU is asked for. ``spaces`` must be imported
before CUDA is first touched (it patches torch), which importing this module from :mod:`d3s.handlers` does: the app
loads its models after that import.
"""

from __future__ import annotations

import inspect
import math

try:  # before torch initialises CUDA: on ZeroGPU, `spaces` patches torch at import
    import spaces
except ImportError:  # not installed: run as today
    spaces = None

from .hosting import Limits, Refused  # noqa: E402
from .live import generate_across  # noqa: E402

# Estimates for Stable Diffusion 1.x in fp16 at 512 px, guided (two UNet passes a step), on a ZeroGPU slice, with
# room to spare: a request asking for less than it uses is cut off by ZeroGPU, one asking for more waits longer in
# its queue. Denoising time grows with the pixels (size squared).
SECONDS_PER_STEP_512 = 0.1
SECONDS_PER_REQUEST = 5.0  # the pipeline's first move to the GPU, the prompt's text encoding
SECONDS_PER_IMAGE = 2.0  # VAE encoding and decoding, the safety checker, the classifiers (Across backgrounds)


def gpu_seconds(limits: Limits, images: int, size: int, steps: int, strength: float = 1.0) -> int:
    """Seconds of GPU one request needs: its denoising (``images`` x ``int(steps * strength)`` img2img steps at
    ``size`` px, stopped at ``limits.time_limit`` by :class:`d3s.hosting.Deadline`) plus what the limit cannot stop
    (per request and per image). Never more than ``limits.time_limit`` plus that margin."""
    denoising = images * int(steps * strength) * SECONDS_PER_STEP_512 * (size / 512) ** 2
    return math.ceil(min(denoising, limits.time_limit) + SECONDS_PER_REQUEST + images * SECONDS_PER_IMAGE)


def on_gpu(limits: Limits, default_size: int, default_steps: int, images: int = 1):
    """Decorator: ``spaces.GPU(duration=...)`` when ``spaces`` is installed (a no-op off ZeroGPU), else the identity.

    Args:
        limits (`Limits`): the app's bounds; the request's ``size``, ``steps`` and ``strength`` are read from the
            decorated function's arguments by name, as the handler reads them (0: the default).
        default_size (`int`), default_steps (`int`): what 0 means for this handler.
        images (`int`, *optional*, defaults to 1): images one request makes (10 for Across backgrounds).

    The duration function is also kept on the result as ``gpu_seconds`` (``functools.wraps`` carries it to the
    served handler), so it can be read where ``spaces.GPU`` returned the function unchanged.
    """

    def decorate(fn):
        signature = inspect.signature(fn)

        def duration(*args, **kwargs) -> int:
            arguments = signature.bind_partial(*args, **kwargs).arguments
            # a handler without a strength input (Across backgrounds) denoises at d3s.live's default
            fallback = inspect.signature(generate_across).parameters["strength"].default
            try:
                size = limits.size(arguments.get("size", 0), default_size)
                steps = limits.steps(arguments.get("steps", 0), default_steps)
                strength = limits.strength(arguments.get("strength", fallback))
            except Refused:  # the handler refuses it before any denoising
                return gpu_seconds(limits, images, 64, 0)
            return gpu_seconds(limits, images, size, steps, strength)

        wrapped = spaces.GPU(duration=duration)(fn) if spaces is not None else fn
        wrapped.gpu_seconds = duration
        return wrapped

    return decorate
