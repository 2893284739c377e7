"""d3s: Diffusion Dreamed Distribution Shifts.

Generate images of the 1000 ImageNet classes on controlled backgrounds with Stable Diffusion
(``d3s generate``), benchmark classifiers on them, and learn features that separate foreground
from background. Modules follow the data flow: labels and prompts -> guides -> diffusion /
generate -> dataset -> benchmark / training -> probes -> hub; ``app.py`` sits on top.
"""

__version__ = "0.1.0"
