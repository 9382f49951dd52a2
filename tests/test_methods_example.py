"""The 20-line example in the methods package docstring is real code: it registers, fits and predicts."""
import re
import types

import torch

import fss_lab.methods as methods
from fss_lab.methods import Task, create_method
from fss_lab.methods import registry


def test_docstring_example_method_runs_and_registers():
    doc = methods.__doc__
    block = doc.split("fss_lab/methods/nearest_pixel.py``::", 1)[1].split("\nand ``from . import", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines())
    code = re.sub(r"from \.(\w+) import", r"from fss_lab.methods.\1 import", code)
    module = types.ModuleType("fss_lab.methods.nearest_pixel")
    try:
        exec(compile(code, "nearest_pixel.py", "exec"), module.__dict__)
        assert "nearest-pixel" in registry._REGISTRY
        m = create_method("nearest-pixel")
        g = torch.Generator().manual_seed(0)
        fs, fq = torch.randn(2, 4, 4, 4, generator=g), torch.randn(3, 4, 4, 4, generator=g)
        masks = torch.zeros(2, 8, 8, dtype=torch.long)
        masks[:, :4] = 1
        task = Task.fss(fs, masks, fq)
        out = m.fit(task).predict(task)
        assert out.shape == (3, 2, 8, 8)
        # a query equal to a support is segmented like that support's mask (up to the bilinear border rows)
        same = Task.fss(fs, masks, fs[:1])
        agree = (m.fit(same).predict(same).argmax(1)[0] == masks[0]).float().mean()
        assert agree >= 0.85
    finally:
        registry._REGISTRY.pop("nearest-pixel", None)
