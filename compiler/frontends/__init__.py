"""Front doors: ONNX to IR (``load_onnx``), IR back to ONNX (``to_onnx``, ``save_onnx``).

The PyTorch frontend (``compiler/frontends/fx.py``) adds itself in the marked block below.
"""

from compiler.frontends.onnx_export import save_onnx, to_onnx
from compiler.frontends.onnx_import import check_finite, load_onnx

__all__ = ["check_finite", "load_onnx", "save_onnx", "to_onnx"]

# --- PyTorch frontend (fx.py) ------------------------------------------------------------------
# The torch.export frontend registers its public names here, e.g.
#   from compiler.frontends.fx import load_torch
#   __all__ += ["load_torch"]
from compiler.frontends.fx import load_torch  # fx.py imports torch only when called

__all__ += ["load_torch"]
# --- end PyTorch frontend ----------------------------------------------------------------------
