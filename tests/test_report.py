"""report.png: the loss axes stay readable when the loss barely moves."""

import matplotlib.pyplot as plt

from zofed import report


def test_a_small_change_is_plotted_as_plain_numbers(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(report.plt, "close", figures.append)  # keep the figure to read its axes
    rows = [{"round": 1, "eval_loss": 10.81352, "bytes_up": 10, "bytes_down": 10},
            {"round": 2, "eval_loss": 10.81351, "bytes_up": 10, "bytes_down": 10}]
    report.plot_run(rows, 10.81353, tmp_path / "report.png", "run")
    assert (tmp_path / "report.png").is_file()
    [figure] = figures
    figure.canvas.draw()
    for axis in figure.axes:
        labels = [label.get_text() for label in axis.get_yticklabels() if label.get_text()]
        assert axis.yaxis.get_offset_text().get_text() == ""  # no `1e-5+1.08135e1` above the axis
        assert labels and all("e" not in label and label.startswith("10.8135") for label in labels), labels
        assert len(set(labels)) == len(labels)  # the ticks tell the values apart
    plt.close(figure)
