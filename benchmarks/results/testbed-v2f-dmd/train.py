"""v2f: DMD2's recipe on the shipped base — no regression anchor, two time-scale rule, GAN term (issue #24 item 6)."""
import json, time
from pathlib import Path
from conceptspace.testbed.train import distill_dmd
from conceptspace.testbed.pair import *  # noqa
import conceptspace
base = Path(conceptspace.__file__).parent / "testbed" / "weights" / "shapes"
start = time.time()
distill_dmd(Path("/work/runs/v2f/dmd/unet"), base, seed=0, steps=800, num_pairs=0, regression_weight=0.0,
            fake_updates=5, gan_weight=5e-3, num_threads=2, checkpoint_every=50)
print("seconds", time.time() - start)
