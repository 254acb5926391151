"""Quiet diffusers and transformers while they load or convert weights: their info lines, warnings and
progress bars would bury ours; problems that matter are checked by the caller and raised as UserError."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet_libraries():
    """Within the block, silence diffusers' and transformers' info/warning chatter and progress bars
    (problems that matter are checked here and raised as UserError); their settings are restored after."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (dlog, tlog)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bars in saved:
            lib.set_verbosity(level)
            if bars:
                lib.enable_progress_bar()
