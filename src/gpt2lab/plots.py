"""Pictures: loss curves, attention patterns, per-token losses.

Everything here draws with matplotlib's headless Agg backend into PNG files
(or returns the figure, for a notebook), so it works on a server with no screen.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
