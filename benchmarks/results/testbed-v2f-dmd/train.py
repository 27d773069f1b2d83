"""v2f: DMD2's recipe on the shipped base — no regression anchor, two time-scale rule, GAN term (issue #24, part 6).

The exact call that made this folder's UNet (run from a scratch folder, 2 torch threads).
"""

import time
from pathlib import Path

import conceptspace
from conceptspace.testbed.train import distill_dmd

base = Path(conceptspace.__file__).parent / "testbed" / "weights" / "shapes"
start = time.time()
distill_dmd(
    Path("dmd/unet"), base, seed=0, steps=800, num_pairs=0, regression_weight=0.0, fake_updates=5,
    gan_weight=5e-3, num_threads=2, checkpoint_every=50,
)  # fmt: skip
print("seconds", time.time() - start)
