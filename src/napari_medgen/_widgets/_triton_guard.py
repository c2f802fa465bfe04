"""Keep triton out of a napari process whose OpenGL runs on Mesa's llvmpipe.

Mesa's software OpenGL (Xvfb, VMs, remote desktops) loads the system ``libLLVM``
with its symbols visible process-wide.  triton bundles its own LLVM, and the static
initialisers of ``libtriton.so`` then bind to Mesa's copy and crash the process
(SIGSEGV in ``llvm::DebugCounter``) the moment triton is imported, which happens
through ``torch._dynamo`` (pulled in by torchvision and MONAI's optional imports)
when a panel is opened after an image was drawn.  The viewer needs no triton (it
only compiles GPU kernels for ``torch.compile``), so while a foreign libLLVM is
loaded, ``import triton`` fails with ModuleNotFoundError, which torch and MONAI
treat as "triton not installed".  Importing triton *before* Mesa's LLVM is safe,
so a triton already imported is left alone.
"""
from __future__ import annotations

import importlib.abc
import sys


def foreign_llvm_loaded() -> bool:
    """True when a libLLVM other than triton's is mapped into this process (Linux only)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libLLVM" in line and "triton" not in line for line in maps)
    except OSError:
        return False


class _TritonBlocker(importlib.abc.MetaPathFinder):
    """Refuses ``import triton`` once a foreign libLLVM is loaded; otherwise lets it through."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "triton" and foreign_llvm_loaded():
            sys.modules["triton"] = None  # later imports and find_spec() see "not installed"
            raise ModuleNotFoundError("triton is disabled in napari: Mesa's LLVM is loaded", name="triton")
        return None


def install() -> None:
    """Block triton now if Mesa's LLVM is already loaded, and at import time if it gets loaded later."""
    if "triton" in sys.modules:
        return
    if foreign_llvm_loaded():
        sys.modules["triton"] = None
    elif not any(isinstance(f, _TritonBlocker) for f in sys.meta_path):
        sys.meta_path.insert(0, _TritonBlocker())
