"""Weight renderings a person reads: the PNG sets tokens as wrapped text (no rotated or clipped labels),
each on a background shaded by its weight."""

import matplotlib.figure
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

import weight_analysis


def test_tokens_wrap_like_text():
    tokens = ["Hello", " world", ".\n", "A", " very", " long" * 30, "!"]
    placed = weight_analysis.wrap_tokens(tokens, columns=13)
    assert placed[:5] == [(0, 0, "Hello"), (0, 5, " world"), (0, 11, ".↵"), (1, 0, "A"), (1, 1, " very")]
    assert placed[5] == (2, 0, (" long" * 30)[:13])  # too long for a line: a line of its own, cut
    assert placed[6] == (3, 0, "!")


class Tokenizer:
    def decode(self, ids):
        return ["The", " river", " Aldeno", " floods", " Merrow", "\n", " every", " spring", "."][ids[0]]


def test_png_text_is_upright_and_inside_the_picture(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda figure, *args, **kwargs: saved.append(figure))
    ids = torch.arange(9).repeat(40).view(1, -1)  # 360 tokens: many lines
    weights = torch.linspace(0, 2, ids.shape[1]).view(1, -1)
    weight_analysis.render_weights(
        Tokenizer(), ids, weights, tmp_path / "w.html", tmp_path / "w.png", titles=["/a/long/absolute/path/doc.txt"]
    )
    (figure,) = saved
    renderer = FigureCanvasAgg(figure).get_renderer()
    box = figure.bbox
    texts = [t for ax in figure.axes for t in ax.texts] + [figure._suptitle]
    lines = [t for t in texts if "Aldeno" in t.get_text()]
    assert len(lines) >= 10, "the document is set as lines of text"
    assert all(t.get_rotation() == 0 for t in texts)
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text.get_text()[:40]
        assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text.get_text()[:40]
    shaded = [p.get_facecolor()[3] for ax in figure.axes for p in ax.patches]
    assert len(shaded) == ids.shape[1] and shaded[0] < shaded[-1]  # one box per token, darker for heavier
