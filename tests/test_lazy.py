"""lazy_import: the module loads on its first attribute read, once, and never shows in sys.modules before."""

import sys

from zofed.lazy import lazy_import


def test_the_module_is_imported_on_the_first_read_and_on_load_runs_once(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)  # a small stdlib module nothing here needs
    loaded = []
    colorsys = lazy_import("colorsys", on_load=loaded.append)
    assert "colorsys" not in sys.modules and loaded == [] and "not imported yet" in repr(colorsys)
    assert colorsys.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert "colorsys" in sys.modules and loaded == [sys.modules["colorsys"]]
    assert colorsys.hsv_to_rgb(0.0, 1.0, 1.0) == (1.0, 0.0, 0.0) and len(loaded) == 1
    assert colorsys.rgb_to_hsv is sys.modules["colorsys"].rgb_to_hsv
