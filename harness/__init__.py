"""Everything that drives, checks, stores and reports blockfuzz runs."""

import blockfuzz_fast as _fast

_fast.extend(__name__, __path__)   # the compiled modules, when current (make fast)
