import os
import sys

import jax

# float64 cases need x64 before any array is created
jax.config.update("jax_enable_x64", True)

# lets test modules import numpy_reference under any pytest import mode
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
