"""The runtime imports and runs inference where torch cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_inference_without_torch(model_factory, tmp_path):
    model = model_factory(input_size=(16, 16), crop="circle", tta="d4")
    script = textwrap.dedent(f"""
        import sys
        class BlockTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")
        sys.meta_path.insert(0, BlockTorch())
        import numpy as np
        import edgereg
        from edgereg.cli.main import main
        p = edgereg.Predictor({str(model)!r})
        r = p.predict([np.full((20, 20, 3), 128, np.uint8)])
        assert r.values.shape == (1, 1) and r.spread is not None
        assert main(["info", {str(model)!r}]) == 0
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch imported"
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "OK" in result.stdout
